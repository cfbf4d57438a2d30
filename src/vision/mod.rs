//! Image operations on frames: Sobel edges (the model conditioning), resampling, and tile shuffling (reference
//! stills for restyle models).

pub mod edges;
pub mod resize;
pub mod tensor;
pub mod tiles;
