//! Keeping a request replayable without allocating for it.
//!
//! An idempotent, bodiless request may be sent to another backend if the first one fails
//! after it was sent, so it must be kept; but hyper consumes what it sends. A copy of the
//! header map is sent instead. hyper recycles the maps it sends (it parses the backend's
//! response into the same allocation, which then becomes the client's response, which
//! hyper recycles for the next request), so the only cost left would be allocating the
//! copy: the copy is made into a per-thread spare map, and the original, once no longer
//! needed, becomes the next spare.

use std::cell::RefCell;

use http::HeaderMap;

thread_local! {
    static SPARE: RefCell<Option<HeaderMap>> = const { RefCell::new(None) };
}

/// A copy of `src` in a recycled map (header values are reference-counted, not copied).
pub fn copy_headers(src: &HeaderMap) -> HeaderMap {
    let mut map = SPARE.with(|s| s.borrow_mut().take()).unwrap_or_default();
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
    SPARE.with(|s| *s.borrow_mut() = Some(map));
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
}
