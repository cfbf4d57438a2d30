//! Noise schedulers (in progress)
