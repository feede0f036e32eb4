//! Open-file and open-directory handles: what each `fh` the kernel holds stands for.

use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::mapref::one::Ref;
use dashmap::DashMap;

/// Handle 0 is never issued: it stands for "no open" (zero-message opens).
pub const NO_HANDLE: u64 = 0;

pub struct Handles<T> {
    open: DashMap<u64, T>,
    next: AtomicU64,
}

impl<T> Default for Handles<T> {
    fn default() -> Self {
        Handles { open: DashMap::new(), next: AtomicU64::new(NO_HANDLE + 1) }
    }
}

impl<T> Handles<T> {
    pub fn insert(&self, value: T) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.open.insert(fh, value);
        fh
    }

    /// Keeps `value` under a new handle and answers the open with it, keeping the page cache.
    pub fn reply_opened(&self, value: T, reply: fuser::ReplyOpen) {
        let fh = self.insert(value);
        reply.opened(fuser::FileHandle(fh), fuser::FopenFlags::FOPEN_KEEP_CACHE);
    }

    pub fn get(&self, fh: u64) -> Option<Ref<'_, u64, T>> {
        self.open.get(&fh)
    }

    pub fn remove(&self, fh: u64) {
        self.open.remove(&fh);
    }
}
