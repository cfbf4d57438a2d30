//! Progress reporting without drawing: long library jobs (the augment pipeline, training) tell an [`Observer`]
//! how far they are; the CLI implements it with terminal progress bars, tests and library callers pass
//! [`Silent`]. The library never writes to the terminal itself.

/// One line of progress: a count of done units towards a total, with a short status message.
pub trait Observer: Send + Sync {
    /// The job has `total` units.
    fn start(&self, _total: u64) {}
    /// `n` more units are done.
    fn advance(&self, _n: u64) {}
    /// A short status shown next to the count (a rate, the current loss).
    fn message(&self, _text: &str) {}
    /// The job is over (finished or stopped); the line may go.
    fn finish(&self) {}
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Observer for Silent {}
