//! A pool's wait queue (`queue_timeout`): requests that find every backend of the pool
//! at `max_connections` wait here, first come first served, for a slot (HAProxy's
//! `maxconn` + queue).
//!
//! Only the head of the line tries to take a slot; the others sleep. An in-flight guard
//! of a queued pool that gives its slot back wakes the head ([`WaitQueue::released`]);
//! a head that leaves (served, timed out, or its client gone and its future dropped)
//! wakes the next one, which tries in its turn. So no waiter polls, none is passed
//! over, and while anyone waits a new request joins the tail instead of overtaking.
//!
//! Used by `pool.rs` (joining, taking a slot) and `backend.rs` (the guard's release).
//! A pool without a queue has none: its picks and guards never touch this.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering, fence};
use std::sync::{Mutex, MutexGuard};
use std::task::{Poll, Waker};

/// One pool's line of waiting requests, carried over reloads with the pool's name.
#[derive(Debug, Default)]
pub struct WaitQueue {
    /// Requests waiting now. Written under `line`'s lock by joining and leaving; read
    /// without it by [`WaitQueue::released`], new requests and the admin listener.
    /// `SeqCst`: a join and a release must not both miss each other (see `join`).
    waiting: AtomicUsize,
    line: Mutex<Line>,
}

#[derive(Debug, Default)]
struct Line {
    /// The id the next waiter gets.
    next_id: u64,
    /// Oldest first.
    waiters: VecDeque<Entry>,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    /// Woken and not yet seen by its waiter.
    woken: bool,
    waker: Option<Waker>,
}

impl Line {
    /// Wakes the waiter at the head, if any.
    fn wake_head(&mut self) {
        if let Some(head) = self.waiters.front_mut() {
            head.woken = true;
            if let Some(w) = head.waker.take() {
                w.wake();
            }
        }
    }
}

impl WaitQueue {
    /// Requests waiting now.
    #[inline]
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Joins the tail of the line. The place is left when it is dropped.
    pub fn join(&self) -> Place<'_> {
        let mut line = self.lock();
        let id = line.next_id;
        line.next_id += 1;
        line.waiters.push_back(Entry {
            id,
            woken: false,
            waker: None,
        });
        self.waiting.fetch_add(1, Ordering::SeqCst);
        drop(line);
        // Pairs with the fence in `released`: either that release sees this waiter and
        // wakes the head, or the slot it gave back is visible to the pick that follows.
        fence(Ordering::SeqCst);
        Place { queue: self, id }
    }

    /// A slot of the pool came back (called by the in-flight guard after its count went
    /// down): the head of the line is woken to try for it.
    #[inline]
    pub fn released(&self) {
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) == 0 {
            return;
        }
        self.lock().wake_head();
    }

    /// The line, whatever a panicking holder left: every change to it is one step.
    fn lock(&self) -> MutexGuard<'_, Line> {
        self.line.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A request's place in a [`WaitQueue`]; dropping it leaves the line, and a head that
/// leaves wakes the next.
#[derive(Debug)]
pub struct Place<'a> {
    queue: &'a WaitQueue,
    id: u64,
}

impl Place<'_> {
    /// Whether this place is at the head of the line: the only one that may take a slot.
    pub fn is_head(&self) -> bool {
        self.queue
            .lock()
            .waiters
            .front()
            .is_some_and(|e| e.id == self.id)
    }

    /// Until this place is woken: a slot came back while it was the head, or it became
    /// the head. A wake that came before the call is not lost.
    pub async fn woken(&self) {
        poll_fn(|cx| {
            let mut line = self.queue.lock();
            let Some(entry) = line.waiters.iter_mut().find(|e| e.id == self.id) else {
                return Poll::Ready(());
            };
            if entry.woken {
                entry.woken = false;
                return Poll::Ready(());
            }
            match &mut entry.waker {
                Some(w) => w.clone_from(cx.waker()),
                None => entry.waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut line = self.queue.lock();
        let Some(at) = line.waiters.iter().position(|e| e.id == self.id) else {
            return;
        };
        line.waiters.remove(at);
        self.queue.waiting.fetch_sub(1, Ordering::SeqCst);
        if at == 0 {
            // The slot this head was woken for, or one that comes free later, is the
            // next one's to try for.
            line.wake_head();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;
    use std::sync::Arc;
    use std::task::{Context, Wake};

    /// A waker that counts its wakes.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll_once(place: &Place<'_>, waker: &Arc<Count>) -> Poll<()> {
        let w = Waker::from(Arc::clone(waker));
        let mut cx = Context::from_waker(&w);
        pin!(place.woken()).as_mut().poll(&mut cx)
    }

    /// A waker that writes its waiter's number into a shared log when woken.
    struct Logs(usize, Arc<Mutex<Vec<usize>>>);

    impl Wake for Logs {
        fn wake(self: Arc<Self>) {
            self.1.lock().unwrap().push(self.0);
        }
    }

    #[test]
    fn waiters_are_woken_and_served_in_arrival_order() {
        let q = WaitQueue::default();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut places: VecDeque<(usize, Place<'_>)> = (0..4).map(|i| (i, q.join())).collect();
        assert_eq!(q.waiting(), 4);
        let wakers: Vec<Waker> = (0..4)
            .map(|i| Waker::from(Arc::new(Logs(i, Arc::clone(&log)))))
            .collect();
        let poll = |p: &Place<'_>, i: usize| {
            let mut cx = Context::from_waker(&wakers[i]);
            pin!(p.woken()).as_mut().poll(&mut cx)
        };
        for (i, p) in &places {
            assert!(poll(p, *i).is_pending());
        }
        let mut served = Vec::new();
        while let Some((i, head)) = places.pop_front() {
            // A slot comes back: only the head may take it.
            q.released();
            for (j, p) in &places {
                assert!(!p.is_head() && poll(p, *j).is_pending(), "{j} before {i}");
            }
            assert!(head.is_head() && poll(&head, i).is_ready());
            served.push(i);
            drop(head);
        }
        assert_eq!(served, vec![0, 1, 2, 3]);
        assert_eq!(*log.lock().unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(q.waiting(), 0);
    }

    #[test]
    fn a_release_before_the_wait_is_not_lost() {
        let q = WaitQueue::default();
        let place = q.join();
        q.released();
        assert!(poll_once(&place, &Arc::default()).is_ready());
    }

    #[test]
    fn a_release_with_nobody_waiting_leaves_nothing_behind() {
        let q = WaitQueue::default();
        q.released();
        let place = q.join();
        assert!(poll_once(&place, &Arc::default()).is_pending());
    }

    #[test]
    fn a_waiter_that_leaves_gives_its_turn_to_the_next() {
        let q = WaitQueue::default();
        let first = q.join();
        let second = q.join();
        let third = q.join();
        let (w1, w2, w3) = (Arc::default(), Arc::default(), Arc::default());
        assert!(poll_once(&first, &w1).is_pending());
        assert!(poll_once(&second, &w2).is_pending());
        assert!(poll_once(&third, &w3).is_pending());
        // The middle one's client goes away: nobody is woken, the line closes up.
        drop(second);
        assert_eq!(q.waiting(), 2);
        assert_eq!(w3.0.load(Ordering::SeqCst), 0);
        // The head is woken for a slot but its client leaves before taking it: the slot
        // goes to the next in line.
        q.released();
        assert_eq!(w1.0.load(Ordering::SeqCst), 1);
        drop(first);
        assert_eq!(w3.0.load(Ordering::SeqCst), 1);
        assert!(third.is_head() && poll_once(&third, &w3).is_ready());
        drop(third);
        assert_eq!(q.waiting(), 0);
    }
}
