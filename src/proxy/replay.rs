//! Keeping a request replayable without allocating for it.
//!
//! An idempotent, bodiless request may be sent to another backend if the first one fails
//! after it was sent, so it must be kept; but hyper consumes what it sends. A copy of the
//! header map is sent instead. hyper recycles the maps it sends (it parses the backend's
//! response into the same allocation, which then becomes the client's response, which
//! hyper recycles for the next request), so the only cost left would be allocating the
//! copy: the copy is made into a per-thread spare map, and the original, once no longer
//! needed, becomes the next spare. A worker keeps as many spares as it has had requests
//! in flight at once (up to [`MAX_SPARES`]), so concurrency does not bring the
//! allocations back.

use std::cell::RefCell;

use http::HeaderMap;

/// Spare maps kept per worker thread, at most.
pub const MAX_SPARES: usize = 512;

thread_local! {
    static SPARES: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// A copy of `src` in a recycled map (header values are reference-counted, not copied).
pub fn copy_headers(src: &HeaderMap) -> HeaderMap {
    let mut map = SPARES.with(|s| s.borrow_mut().pop()).unwrap_or_default();
    map.clear();
    map.reserve(src.len());
    for (name, value) in src {
        map.append(name.clone(), value.clone());
    }
    map
}

/// Gives a map back for the next copy.
pub fn recycle(mut map: HeaderMap) {
    map.clear();
    SPARES.with(|s| {
        let mut spares = s.borrow_mut();
        if spares.len() < MAX_SPARES {
            spares.push(map);
        }
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn copy_keeps_every_value_in_order() {
        let mut h = HeaderMap::new();
        h.append("a", "1".parse().unwrap());
        h.append("a", "2".parse().unwrap());
        h.append("b", "3".parse().unwrap());
        let c = copy_headers(&h);
        assert_eq!(c, h);
        recycle(c);
        let again = copy_headers(&h);
        assert_eq!(again, h);
    }

    #[test]
    fn concurrent_copies_reuse_their_maps() {
        let mut h = HeaderMap::new();
        h.append("a", "1".parse().unwrap());
        let copies: Vec<HeaderMap> = (0..8).map(|_| copy_headers(&h)).collect();
        let capacities: Vec<usize> = copies.iter().map(HeaderMap::capacity).collect();
        for c in copies {
            recycle(c);
        }
        // All eight come back: eight copies at once need no new map.
        let again: Vec<HeaderMap> = (0..8).map(|_| copy_headers(&h)).collect();
        assert!(again.iter().all(|c| *c == h));
        let mut before = capacities;
        let mut after: Vec<usize> = again.iter().map(HeaderMap::capacity).collect();
        before.sort_unstable();
        after.sort_unstable();
        assert_eq!(before, after);
        SPARES.with(|s| assert!(s.borrow().is_empty()));
    }
}
