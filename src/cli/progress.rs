//! The library reports progress through `vadapt::progress::Observer` (and the pipeline's `Progress`, one line per
//! target); the CLI draws it as indicatif bars on stderr (hidden when stderr is not a terminal, as indicatif does by
//! default).

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use vadapt::progress::Observer;

/// A bar as an observer of a library job.
pub struct Bar(pub ProgressBar);

impl Observer for Bar {
    fn start(&self, total: u64) {
        self.0.set_length(total);
    }
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
    fn message(&self, text: &str) {
        self.0.set_message(text.to_string());
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// A bar of `len` steps drawn with `template` (indicatif's template syntax), `=> ` as its progress characters.
pub fn styled(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// A progress bar on stderr labelled `what`.
pub fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = styled(len, "{msg} [{bar:30}] {pos}/{len} ({eta})");
    bar.set_message(what.to_string());
    bar
}

/// `vadapt augment` and `vadapt merge`: one bar for episodes written, one per target with its frame rate.
pub struct AugmentBars(MultiProgress);

impl AugmentBars {
    pub fn new() -> Self {
        Self(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
    }
}

impl vadapt::pipeline::Progress for AugmentBars {
    fn episodes(&self) -> Box<dyn Observer> {
        let bar = self.0.add(styled(
            0,
            "{prefix:>12} [{bar:30}] {pos}/{len} episodes, {elapsed} elapsed, ETA {eta}",
        ));
        bar.set_prefix("written");
        Box::new(Bar(bar))
    }
    fn target(&self, name: &str) -> Box<dyn Observer> {
        let bar = self
            .0
            .add(styled(0, "{prefix:>12} [{bar:30}] {pos}/{len} {msg}"));
        bar.set_prefix(name.to_string());
        Box::new(Bar(bar))
    }
}
