// A minimal wasi:http 0.2 app for componentize-js (StarlingMonkey fetch event).
//   GET  /anything -> 200 text
//   POST /echo     -> 200, the request body streamed back
//   GET  /raise    -> an uncaught exception (the host answers 500)
addEventListener('fetch', (event) => event.respondWith(handle(event.request)));

async function handle(request) {
  const url = new URL(request.url);
  if (url.pathname.startsWith('/raise')) {
    throw new Error('this route raises on purpose');
  }
  if (request.method === 'POST' && url.pathname.startsWith('/echo')) {
    return new Response(request.body, {
      headers: { 'content-type': 'application/octet-stream' },
    });
  }
  return new Response(`hello from JavaScript on ${url.pathname}\n`, {
    headers: { 'content-type': 'text/plain; charset=utf-8' },
  });
}
