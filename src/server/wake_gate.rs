//! Polling a side future (a connection's watchdog and close signals) only after it was
//! woken, not every time the connection's task runs.
//!
//! A client connection's task wakes several times per request for hyper's I/O. A
//! `select!` over hyper's connection and the side future polls both on every wake-up;
//! measured with callgrind, polling the idle watchdog and close signals that way cost
//! about 1,300 instructions per request. [`Gate`] hands the side future a waker of its
//! own that marks it ready and then wakes the task, so the task polls it only after one
//! of its own events (a timer firing, a shutdown notice).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;

/// The side future's own wake-up flag.
#[derive(Debug, Default)]
struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Polls one side future on behalf of a task, only when that future was woken.
#[derive(Debug)]
pub struct Gate {
    flag: Arc<Flag>,
    waker: Waker,
}

impl Gate {
    /// A gate whose first [`Gate::poll`] polls the side future (so it can register its
    /// wake-ups).
    pub fn new() -> Gate {
        let flag = Arc::new(Flag::default());
        flag.woken.store(true, Ordering::Relaxed);
        let waker = Waker::from(Arc::clone(&flag));
        Gate { flag, waker }
    }

    /// Polls `fut` if it was woken since its last poll (or was never polled); else
    /// returns `Pending` without touching it. Either way the task behind `cx` is woken
    /// when `fut` is.
    pub fn poll<F: Future>(&self, fut: Pin<&mut F>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        fut.poll(&mut Context::from_waker(&self.waker))
    }
}

impl Default for Gate {
    fn default() -> Gate {
        Gate::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready once `ready` is set, waking through the last waker.
    struct Probe {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<std::sync::Mutex<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            if self.ready.load(Ordering::Relaxed) {
                return Poll::Ready(());
            }
            if let Ok(mut w) = self.waker.lock() {
                *w = Some(cx.waker().clone());
            }
            Poll::Pending
        }
    }

    /// Counts the wake-ups of the task that polls the gate.
    struct TaskWakes(AtomicUsize);
    impl Wake for TaskWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn side_future_is_polled_once_then_only_after_its_own_wake() {
        let polls = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let slot = Arc::new(std::sync::Mutex::new(None::<Waker>));
        let mut probe = Probe {
            polls: Arc::clone(&polls),
            ready: Arc::clone(&ready),
            waker: Arc::clone(&slot),
        };
        let task = Arc::new(TaskWakes(AtomicUsize::new(0)));
        let task_waker = Waker::from(Arc::clone(&task));
        let mut cx = Context::from_waker(&task_waker);
        let gate = Gate::new();

        assert!(gate.poll(Pin::new(&mut probe), &mut cx).is_pending());
        assert_eq!(polls.load(Ordering::Relaxed), 1, "first poll registers");
        for _ in 0..5 {
            assert!(gate.poll(Pin::new(&mut probe), &mut cx).is_pending());
        }
        assert_eq!(
            polls.load(Ordering::Relaxed),
            1,
            "not polled without a wake"
        );

        ready.store(true, Ordering::Relaxed);
        let side_waker = slot.lock().unwrap().take().unwrap();
        side_waker.wake();
        assert_eq!(task.0.load(Ordering::Relaxed), 1, "its wake wakes the task");
        assert!(gate.poll(Pin::new(&mut probe), &mut cx).is_ready());
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }
}
