//! Vision ops (in progress)
