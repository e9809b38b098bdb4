//! Example guest: avatar compression at the edge, on the pipeline of the
//! `avatar` crate (the same code the native baseline runs).
//!
//! - `POST /avatar` with a JPEG, PNG or WebP body (at most 10 MiB, read as
//!   it streams in and refused past that): the centre square, oriented by
//!   its EXIF tag and resized with Lanczos3 to 256×256 (`?size=N`, 32 to
//!   1024), as JPEG (`?quality=Q`, default 80) or WebP (`?format=webp` or
//!   `Accept: image/webp`), with `content-type`, `cache-control` and an
//!   `etag` of the output, and a `server-timing` header saying where the
//!   time went (reading the upload, decoding, resizing, encoding).
//!   Not an image: 415; truncated or corrupt: 400; over the upload cap or
//!   25 megapixels (read from the header, before anything is decoded):
//!   413; a bad option or an image that would decode past 128 MiB: 422.
//! - `GET /avatar`: a small HTML form to try it in a browser.

use std::time::Instant;

use avatar::{AvatarError, Limits, options_from, process};
use guest_sdk::exports::wasi::http::incoming_handler::Guest;
use guest_sdk::wasi::http::types::{Fields, IncomingRequest, Method, ResponseOutparam};
use guest_sdk::{path, read_body, respond, send, write_all};

struct App;

const FORM: &str = r#"<!doctype html>
<meta charset="utf-8"><title>Avatar</title>
<h1>Avatar</h1>
<p>Pick a photo: it comes back as a 256×256 avatar.</p>
<input type="file" accept="image/jpeg,image/png,image/webp" id="f">
<p><img id="out" alt=""></p>
<script>
document.getElementById('f').onchange = async (e) => {
  const r = await fetch(location.pathname, {method: 'POST', body: e.target.files[0]});
  if (!r.ok) { alert(await r.text()); return; }
  document.getElementById('out').src = URL.createObjectURL(await r.blob());
};
</script>
"#;

fn header(request: &IncomingRequest, name: &str) -> Option<String> {
    let values = request.headers().get(name);
    values
        .first()
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn refuse(out: ResponseOutparam, err: &AvatarError) {
    respond(
        out,
        err.status(),
        "text/plain; charset=utf-8",
        format!("{err}\n").as_bytes(),
    );
}

impl Guest for App {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let own = path(&request);
        if !own.ends_with("/avatar") {
            return respond(out, 404, "text/plain", b"try GET or POST /avatar\n");
        }
        match request.method() {
            Method::Get => respond(out, 200, "text/html; charset=utf-8", FORM.as_bytes()),
            Method::Post => {
                let query = request
                    .path_with_query()
                    .and_then(|p| p.split_once('?').map(|(_, q)| q.to_string()))
                    .unwrap_or_default();
                let accept = header(&request, "accept");
                let options = match options_from(&query, accept.as_deref()) {
                    Ok(options) => options,
                    Err(err) => return refuse(out, &err),
                };
                let limits = Limits::default();
                let start = Instant::now();
                let Some(upload) = read_body(request, limits.max_upload_bytes) else {
                    return refuse(
                        out,
                        &AvatarError::TooLarge(format!(
                            "the upload is over {} bytes (or it broke off)",
                            limits.max_upload_bytes
                        )),
                    );
                };
                let read = start.elapsed();
                match process(&upload, options, limits) {
                    Ok(avatar) => {
                        let headers = Fields::new();
                        let _ = headers.append("content-type", avatar.content_type.as_bytes());
                        let _ = headers
                            .append("content-length", avatar.bytes.len().to_string().as_bytes());
                        let _ =
                            headers.append("cache-control", b"public, max-age=31536000, immutable");
                        let _ = headers.append("etag", avatar.etag.as_bytes());
                        let timing = format!(
                            "read;dur={:.2}, {}",
                            read.as_secs_f64() * 1000.0,
                            avatar.timings.header()
                        );
                        let _ = headers.append("server-timing", timing.as_bytes());
                        send(out, 200, headers, |stream| write_all(stream, &avatar.bytes));
                    }
                    Err(err) => refuse(out, &err),
                }
            }
            _ => respond(out, 405, "text/plain", b"use GET or POST\n"),
        }
    }
}

guest_sdk::export!(App with_types_in guest_sdk);
