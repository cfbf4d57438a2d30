//! Image operations on frames: Sobel edges (the model conditioning) and resampling.

pub mod edges;
pub mod resize;
pub mod tensor;
