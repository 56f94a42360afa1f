//! Coalescing of uio writes ("doorbells") from many threads.
//!
//! A thread that publishes completions (stores `cmd_tail`) calls
//! [`Doorbell::published`] under the ring lock and [`Doorbell::ring`] after
//! dropping it. Only one thread writes at a time; one that finds another
//! writing leaves the telling to it, and the writer looks again after its
//! write, writing once more if anything was published meanwhile. So every
//! publication is followed by a write that starts after it, and concurrent
//! publications share writes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Doorbell {
    /// Publications so far.
    published: AtomicU64,
    /// The publication count the last write covered.
    rung: AtomicU64,
    /// Held by the thread making the write.
    ringing: AtomicBool,
}

impl Doorbell {
    /// Records one publication (call it after storing `cmd_tail`).
    pub fn published(&self) {
        self.published.fetch_add(1, Ordering::SeqCst);
    }

    /// Makes sure a write follows every publication made before this call:
    /// writes itself, or leaves it to the thread writing now. Returns the
    /// number of writes this call made.
    pub fn ring(&self, mut write: impl FnMut()) -> usize {
        let mut writes = 0;
        loop {
            if self.ringing.swap(true, Ordering::SeqCst) {
                return writes;
            }
            let seen = self.published.load(Ordering::SeqCst);
            if seen != self.rung.load(Ordering::SeqCst) {
                write();
                writes += 1;
                self.rung.store(seen, Ordering::SeqCst);
            }
            self.ringing.store(false, Ordering::SeqCst);
            // A publisher that found us writing relies on this look.
            if self.published.load(Ordering::SeqCst) == seen {
                return writes;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[test]
    fn nothing_published_nothing_written() {
        let d = Doorbell::default();
        assert_eq!(d.ring(|| panic!("no write expected")), 0);
        d.published();
        assert_eq!(d.ring(|| {}), 1);
        assert_eq!(d.ring(|| panic!("already rung")), 0);
    }

    /// A publication made while another thread writes is covered by a
    /// second write of that thread, started after the publication.
    #[test]
    fn publication_during_a_write_gets_its_own_write() {
        let d = Doorbell::default();
        d.published();
        let mut calls = 0;
        let mut during = None;
        let n = d.ring(|| {
            calls += 1;
            if calls == 1 {
                // Another thread publishes while this write is under way.
                d.published();
                during = Some(d.ring(|| panic!("the writer is busy")));
            }
        });
        assert_eq!(during, Some(0), "the busy writer's caller must not write");
        assert_eq!(
            n, 2,
            "the writer must write again for the later publication"
        );
        assert_eq!(d.ring(|| panic!("all covered")), 0);
    }

    /// Threads publish and ring concurrently; a write is "seen" by a
    /// publication when it starts after it. Every publication must be seen
    /// by some write, and writes never outnumber publications.
    #[test]
    fn every_publication_is_followed_by_a_write() {
        const THREADS: usize = 4;
        const ROUNDS: u64 = 20_000;
        let d = Arc::new(Doorbell::default());
        // Publications made so far, and the count the latest write saw at
        // its start.
        let made = Arc::new(AtomicU64::new(0));
        let covered = Arc::new(AtomicU64::new(0));
        let writes = Arc::new(AtomicUsize::new(0));
        let hs: Vec<_> = (0..THREADS)
            .map(|_| {
                let (d, made, covered, writes) =
                    (d.clone(), made.clone(), covered.clone(), writes.clone());
                std::thread::spawn(move || {
                    for _ in 0..ROUNDS {
                        made.fetch_add(1, Ordering::SeqCst);
                        d.published();
                        d.ring(|| {
                            let now = made.load(Ordering::SeqCst);
                            covered.fetch_max(now, Ordering::SeqCst);
                            writes.fetch_add(1, Ordering::SeqCst);
                            // A write takes time (the kernel's completion
                            // work): let others publish meanwhile.
                            std::thread::yield_now();
                        });
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        let total = THREADS as u64 * ROUNDS;
        assert_eq!(made.load(Ordering::SeqCst), total);
        assert_eq!(
            covered.load(Ordering::SeqCst),
            total,
            "the last publication was never followed by a write"
        );
        let w = writes.load(Ordering::SeqCst) as u64;
        assert!(w >= 1 && w <= total, "{w} writes for {total} publications");
    }
}
