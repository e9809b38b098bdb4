//! WASI 0.3 instances that serve several requests at once
//! (`instance_concurrency` > 1, with `instance_reuse` > 1).
//!
//! A WASI 0.3 guest is asynchronous: while one request waits (on its body,
//! an outbound call, a timer) the instance can run another. An app that
//! keeps no state may let one instance take up to `instance_concurrency`
//! requests at once, and `instance_reuse` in all, as `wasmtime serve` does
//! by default. Each such instance is a worker: a task that owns the store,
//! runs the component's event loop (`Store::run_concurrent`) and takes
//! requests from a channel; [`SharedPool`] hands each request to a worker
//! with room, or starts a new one.
//!
//! What sharing costs, and how the host bounds it:
//! - A trap or the memory cap ends the instance, and every request it had
//!   not answered yet fails with it (500).
//! - A guest on CPU holds the whole instance: the others wait. The epoch
//!   interrupts it at the latest deadline of the requests the instance has
//!   taken, which ends the instance as above.
//! - A request still without an answer at its deadline gets its 504 (from
//!   its own timer) and the instance takes no more requests; it is dropped
//!   once the others have their answers, and at the latest deadline of all
//!   it took.
//! - A client that goes away cannot cancel its request alone: the request
//!   runs on in the instance to its answer or its deadline.
//! - The app's concurrency cap counts requests, not instances: a request
//!   holds its permits until the instance is done with it (its body
//!   streamed, or the instance gone). The memory cap and the host-side
//!   resource cap are per instance, so shared by its requests.
//! - Guest output (stdout/stderr) is logged under the request id of the
//!   request that started the instance.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use http::{Request, Response};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use wasmtime::Store;
use wasmtime::component::Accessor;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p3::bindings::{Service, ServicePre};

use crate::metrics::metrics;
use crate::runtime::failure::Failure;
use crate::runtime::instance::{Instances, RequestContext};
use crate::runtime::p3::{DeadlineBody, absolute};
use crate::runtime::state::HostState;

/// A worker with nothing to do for this long is dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

type RequestBody = UnsyncBoxBody<Bytes, wasmtime_wasi_http::Error>;
type Reply = Result<Response<HyperOutgoingBody>, Failure>;
/// Where each request a worker took waits for its answer, by request
/// number: kept outside the event loop, so that when the instance fails
/// every request still waiting hears why.
type Replies = Arc<Mutex<HashMap<u64, (Instant, oneshot::Sender<Reply>)>>>;

/// A request handed to a worker.
struct Job {
    number: u64,
    request: Request<RequestBody>,
    deadline: Instant,
    /// Its host-wide and app permits: held while the instance works on it.
    permits: Permits,
}

type Permits = (OwnedSemaphorePermit, OwnedSemaphorePermit);

/// A running worker, as the pool sees it.
struct Slot {
    id: u64,
    jobs: mpsc::UnboundedSender<Job>,
    replies: Replies,
    /// Requests it took and has not answered.
    in_flight: usize,
    /// Requests it took in all.
    taken: u32,
}

/// One version's shared instances.
pub(crate) struct SharedPool {
    slots: Mutex<Vec<Slot>>,
    /// Requests one instance may have at once.
    concurrency: usize,
    /// Requests one instance may take in all.
    max_served: u32,
    next: AtomicU64,
}

impl SharedPool {
    pub(crate) fn new(concurrency: u32, max_served: u32) -> Arc<SharedPool> {
        Arc::new(SharedPool {
            slots: Mutex::new(Vec::new()),
            concurrency: concurrency as usize,
            max_served,
            next: AtomicU64::new(0),
        })
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Give `job` to a worker with room; `Err` hands it back when none has
    /// (boxed: that path instantiates anyway).
    fn offer(
        &self,
        job: Job,
        reply: oneshot::Sender<Reply>,
    ) -> Result<u64, Box<(Job, oneshot::Sender<Reply>)>> {
        let mut slots = self.slots();
        // Workers that have ended (their channel closed) are forgotten.
        slots.retain(|slot| !slot.jobs.is_closed());
        let Some(i) = slots
            .iter()
            .position(|slot| slot.in_flight < self.concurrency)
        else {
            return Err(Box::new((job, reply)));
        };
        let slot = &mut slots[i];
        let mut replies = slot.replies.lock().unwrap_or_else(|e| e.into_inner());
        replies.insert(job.number, (job.deadline, reply));
        let number = job.number;
        if let Err(mpsc::error::SendError(job)) = slot.jobs.send(job) {
            // It ended just now.
            let reply = replies.remove(&number).map(|(_, reply)| reply);
            drop(replies);
            slots.swap_remove(i);
            return match reply {
                Some(reply) => Err(Box::new((job, reply))),
                None => Err(Box::new((job, oneshot::channel().0))),
            };
        }
        drop(replies);
        slot.in_flight += 1;
        slot.taken += 1;
        let id = slot.id;
        if slot.taken >= self.max_served {
            // Its last request: it takes no more.
            slots.swap_remove(i);
        }
        Ok(id)
    }

    /// A worker answered one request.
    fn answered(&self, id: u64) {
        if let Some(slot) = self.slots().iter_mut().find(|s| s.id == id) {
            slot.in_flight = slot.in_flight.saturating_sub(1);
        }
    }

    /// The worker takes no more requests (those already sent still reach
    /// it: its channel ends after them).
    fn retire(&self, id: u64) {
        let mut slots = self.slots();
        if let Some(i) = slots.iter().position(|s| s.id == id) {
            slots.swap_remove(i);
        }
    }
}

/// Counts a request whose client went away before its answer; the guest
/// cannot be cancelled for it alone and runs on to its answer or deadline.
struct Abandon {
    app: Option<Arc<str>>,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(app) = self.app.take() {
            tracing::debug!(app = %app, "the client went away before the app answered; its request runs on in the shared instance");
            metrics().guest_failure(&app, "cancelled");
        }
    }
}

impl Instances {
    /// Serve `request` on a shared instance of this WASI 0.3 version.
    pub(crate) async fn run_shared(
        &self,
        pool: &Arc<SharedPool>,
        pre: ServicePre<HostState>,
        request: Request<RequestBody>,
        permits: Permits,
        ctx: &RequestContext,
    ) -> Result<Response<HyperOutgoingBody>, Failure> {
        let (started, deadline) = self.clock();
        let request = absolute(request, &ctx.scheme).map_err(Failure::Setup)?;
        let job = Job {
            number: pool.next.fetch_add(1, Ordering::Relaxed),
            request,
            deadline,
            permits,
        };
        let (reply, answer) = oneshot::channel();
        let worker = match pool.offer(job, reply) {
            Ok(worker) => worker,
            Err(missed) => {
                let (job, reply) = *missed;
                self.start_worker(pool, pre, job, reply, ctx)?
            }
        };
        let mut abandon = Abandon {
            app: Some(self.app.clone()),
        };
        let outcome = tokio::time::timeout_at(deadline.into(), answer).await;
        abandon.app = None;
        let ran = started.elapsed();
        ctx.guest_micros
            .store(ran.as_micros() as u64, Ordering::Relaxed);
        self.metrics.guest_time(ran);
        let result = match outcome {
            Ok(Ok(reply)) => reply,
            // Its deadline passed as the instance ended.
            Ok(Err(_)) if Instant::now() >= deadline => Err(Failure::Timeout),
            Ok(Err(_)) => Err(Failure::Trap(wasmtime::format_err!(
                "the shared instance ended without answering"
            ))),
            Err(_elapsed) => {
                pool.retire(worker);
                Err(Failure::Timeout)
            }
        };
        if let Err(failure) = &result {
            failure.log(&self.app, &self.version);
        }
        result
    }

    /// Start a worker whose first request is `job`: a store (charged to the
    /// memory budget), then, on its own task, the instance and its loop.
    fn start_worker(
        &self,
        pool: &Arc<SharedPool>,
        pre: ServicePre<HostState>,
        job: Job,
        reply: oneshot::Sender<Reply>,
        ctx: &RequestContext,
    ) -> Result<u64, Failure> {
        let store = self.store_for_request(ctx, job.deadline)?;
        let (jobs, receiver) = mpsc::unbounded_channel();
        let replies: Replies = Arc::default();
        replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(job.number, (job.deadline, reply));
        let id = pool.next.fetch_add(1, Ordering::Relaxed);
        if pool.max_served > 1 {
            pool.slots().push(Slot {
                id,
                jobs,
                replies: replies.clone(),
                in_flight: 1,
                taken: 1,
            });
        }
        let worker = Worker {
            pool: pool.clone(),
            id,
            replies,
            app: self.app.clone(),
            version: self.version.clone(),
        };
        tokio::spawn(worker.run(pre, store, job, receiver));
        Ok(id)
    }
}

/// One shared instance's task.
struct Worker {
    pool: Arc<SharedPool>,
    id: u64,
    replies: Replies,
    app: Arc<str>,
    version: Arc<str>,
}

impl Worker {
    async fn run(
        self,
        pre: ServicePre<HostState>,
        mut store: Store<HostState>,
        first: Job,
        mut jobs: mpsc::UnboundedReceiver<Job>,
    ) {
        let started = Instant::now();
        let result = async {
            let service = pre.instantiate_async(&mut store).await?;
            metrics()
                .instantiation
                .observe(started.elapsed().as_secs_f64());
            store
                .run_concurrent(async |access| self.work(access, &service, first, &mut jobs).await)
                .await?
        }
        .await;
        self.pool.retire(self.id);
        if let Err(err) = result {
            let failure = Failure::of(&store, err);
            let waiting: Vec<_> = self
                .replies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain()
                .collect();
            let now = Instant::now();
            let mut delivered = 0;
            for (_, (deadline, reply)) in waiting {
                let failure = match failure {
                    // Interrupted at another request's deadline.
                    Failure::Timeout if now < deadline => Failure::Trap(wasmtime::format_err!(
                        "the shared instance was interrupted: it ran on CPU past the deadline of the requests it had taken"
                    )),
                    _ => failure.duplicate(),
                };
                delivered += usize::from(reply.send(Err(failure)).is_ok());
            }
            if delivered == 0 {
                // No request is left to report it (every one had its
                // answer, a body may have been cut): the instance does.
                failure.log(&self.app, &self.version);
            }
        }
    }

    /// Inside the event loop: take requests, run up to the pool's
    /// concurrency at once, and end when retired and every request has its
    /// answer (or is past its deadline), then once the guest's background
    /// work (bodies streaming) is done or the last deadline has passed.
    async fn work(
        &self,
        access: &Accessor<HostState>,
        service: &Service,
        first: Job,
        jobs: &mut mpsc::UnboundedReceiver<Job>,
    ) -> wasmtime::Result<()> {
        let mut running = FuturesUnordered::new();
        // Requests without an answer and not past their deadline.
        let mut waiting: BTreeSet<(Instant, u64)> = BTreeSet::new();
        let mut latest = first.deadline;
        let mut open = true;
        waiting.insert((first.deadline, first.number));
        running.push(self.serve(access, service, first));
        loop {
            // The epoch interrupts a guest on CPU past the latest deadline
            // of the requests taken: one request's deadline does not end
            // the others' work (each gets its own 504 from its timer).
            access.with(|mut store| store.data_mut().deadline = latest);
            let earliest = waiting.first().map(|(deadline, _)| *deadline);
            if !open && waiting.is_empty() {
                break;
            }
            let idle = running.is_empty() && waiting.is_empty();
            tokio::select! {
                biased;
                Some(done) = running.next() => {
                    let (deadline, number) = done?;
                    waiting.remove(&(deadline, number));
                    self.pool.answered(self.id);
                }
                _ = tokio::time::sleep_until(earliest.unwrap_or(latest).into()), if earliest.is_some() => {
                    // Past its deadline without an answer: a 504 (its own
                    // timer may have said so first), and no more requests.
                    if let Some((_, number)) = waiting.pop_first() {
                        let reply = self.replies.lock().unwrap_or_else(|e| e.into_inner()).remove(&number);
                        if let Some((_, reply)) = reply {
                            let _ = reply.send(Err(Failure::Timeout));
                        }
                    }
                    self.pool.retire(self.id);
                }
                job = jobs.recv(), if open => match job {
                    Some(job) => {
                        latest = latest.max(job.deadline);
                        access.with(|mut store| store.data_mut().kv.another_request());
                        waiting.insert((job.deadline, job.number));
                        running.push(self.serve(access, service, job));
                    }
                    None => open = false,
                },
                _ = tokio::time::sleep(IDLE_TIMEOUT), if idle && open => {
                    self.pool.retire(self.id);
                }
            }
        }
        tokio::select! {
            () = std::future::poll_fn(|cx| access.poll_no_interesting_tasks(cx)) => {}
            () = tokio::time::sleep_until(latest.into()) => {}
        }
        Ok(())
    }

    /// One request through the instance: its answer goes to its client.
    async fn serve(
        &self,
        access: &Accessor<HostState>,
        service: &Service,
        job: Job,
    ) -> wasmtime::Result<(Instant, u64)> {
        let Job {
            number,
            request,
            deadline,
            permits,
        } = job;
        let (request, request_io) = wasmtime_wasi_http::p3::Request::from_http(
            wasmtime_wasi_http::default_hooks(),
            request,
        );
        let reply = match service.handle(access, request).await? {
            Ok(response) => {
                let response =
                    access.with(|mut store| response.into_http(&mut store, request_io))?;
                // The permits go with the body: the request counts until
                // it is streamed (or cut at its deadline).
                Ok(response.map(|body| {
                    DeadlineBody::new(body, deadline)
                        .holding(permits)
                        .boxed_unsync()
                }))
            }
            Err(code) => Err(Failure::ErrorCode(format!("{code:?}"))),
        };
        let waiting = self
            .replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&number);
        if let Some((_, waiting)) = waiting {
            let _ = waiting.send(reply);
        }
        Ok((deadline, number))
    }
}
