//! Mamba kernels: the Mamba-1 selective scan and its one-token decode step, the Mamba-2 SSD
//! scan, the causal conv1d, and Mamba-2's fused decode step.

pub mod conv1d;
pub mod conv1d_channels_last;
pub mod mamba2_step;
pub mod matmul;
pub mod selective_scan;
pub mod ssd;
pub mod state_update;
