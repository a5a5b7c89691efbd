//! A balancer pick allocates nothing: counts this thread's allocations while picking
//! from pools of 3, 30 and 300 backends, for every stateless balancer.

#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Uri};
use maitred::backend::{Backend, BackendLive};
use maitred::balancer::{Limits, PickContext, Tried};
use maitred::config::{self, AdminState};

/// The system allocator, counting the calls made on this thread.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// Test-only: a global allocator has to be an `unsafe impl`; this one only counts and
// hands every call to the system allocator unchanged.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn backends(n: usize) -> Vec<Backend> {
    (0..n)
        .map(|i| {
            let name = format!("10.0.{}.{}:80", i / 256, i % 256);
            Backend {
                addr: name.parse().unwrap(),
                name: name.into(),
                weight: 1 + (i % 3) as u32,
                live: Arc::new(BackendLive::new(false, AdminState::Active)),
            }
        })
        .collect()
}

#[test]
fn stateless_picks_allocate_nothing() {
    let limits = Limits {
        max_connections: 0,
        balance_factor: 0.0,
    };
    let (headers, uri): (HeaderMap, Uri) = (HeaderMap::new(), "/".parse().unwrap());
    let ctx = PickContext {
        client_ip: "198.51.100.23".parse().unwrap(),
        headers: &headers,
        uri: &uri,
        now_secs: 0,
        pool_in_flight: 0,
    };
    for balancer in ["round-robin", "least-connections", "peak-ewma"] {
        for n in [3, 30, 300] {
            let bs = backends(n);
            let list: Vec<String> = bs
                .iter()
                .map(|b| format!("{{ addr = \"{}\", weight = {} }}", b.name, b.weight))
                .collect();
            let text = format!(
                "[pool.p]\nbalancer = \"{balancer}\"\nbackends = [{}]\n",
                list.join(", ")
            );
            let cfg = config::parse(&text, "t.toml", std::path::Path::new(".")).unwrap();
            let b = maitred::pool::build_balancer(&cfg.pools[0], &bs, None);
            if let Some(latency) = b.latency() {
                let now = maitred::latency::clock_ns();
                for i in 0..n {
                    latency.observe(&bs, i, Duration::from_millis(1 + i as u64 % 20), now);
                }
            }
            let tried = Tried::new();
            b.pick(&bs, &ctx, &limits, &tried).unwrap();
            let before = ALLOCATIONS.with(Cell::get);
            for _ in 0..10_000 {
                std::hint::black_box(b.pick(&bs, &ctx, &limits, &tried));
            }
            let allocations = ALLOCATIONS.with(Cell::get) - before;
            assert_eq!(allocations, 0, "{balancer} at {n} backends allocated");
            // The counter itself counts.
            std::hint::black_box(vec![0u8; 16]);
            assert_eq!(ALLOCATIONS.with(Cell::get), before + 1);
        }
    }
}
