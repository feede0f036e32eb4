//! Terminal progress for long indexing steps (indicatif); silent when stderr is not a terminal.

use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};
use strata_fs::layer::Progress;

#[derive(Default)]
pub struct TerminalProgress {
    bar: Mutex<Option<ProgressBar>>,
}

impl Progress for TerminalProgress {
    fn start(&self, what: &str, total: u64) {
        let bar = ProgressBar::new(total).with_message(what.to_string());
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})")
                .expect("static template")
                .progress_chars("=> "),
        );
        *self.bar.lock().expect("progress lock") = Some(bar);
    }

    fn set(&self, done: u64) {
        if let Some(bar) = &*self.bar.lock().expect("progress lock") {
            bar.set_position(done);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.lock().expect("progress lock").take() {
            bar.finish_and_clear();
        }
    }
}
