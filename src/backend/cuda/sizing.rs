//! The dry run that sizes the arena: a [`Backend`] that stores nothing and
//! counts what the model's own load and `State` ask for, under the CUDA
//! backend's storage rules (matrices f16, vectors and buffers f32).
//!
//! The arena is one allocation made before the weights are uploaded, so its
//! size must be known first. Rather than a second list of the model's
//! tensors and buffers here (which drifts the day the model changes), the
//! model is loaded once against [`ArenaSizer`] (`Whisper::load_measured`),
//! and the [`Footprint`] it leaves is what [`super::arena::Layout::plan`]
//! lays out.

use std::sync::Mutex;

use crate::backend::{Activation, AttentionShape, Backend, BackendError, HostMatrix, Precision, View, Write};

/// What the model takes on the device, measured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Bytes of every weight tensor, in load order.
    pub weights: Vec<u64>,
    /// Bytes of every buffer of one `State`, in the order they are made.
    pub state: Vec<u64>,
}

/// Counts instead of allocating; runs no operation (the dry run makes
/// tensors and buffers only).
#[derive(Debug, Default)]
pub struct ArenaSizer {
    seen: Mutex<Footprint>,
}

impl ArenaSizer {
    /// Everything counted so far.
    pub fn footprint(&self) -> Footprint {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Footprint> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn weight(&self, elems: usize, elem_bytes: u64) {
        self.lock().weights.push(elems as u64 * elem_bytes);
    }
}

fn no_ops() -> BackendError {
    BackendError::Device("the arena's sizing pass runs no operations".into())
}

impl Backend for ArenaSizer {
    type Matrix = ();
    type Vector = ();
    type Buf = ();
    type Lane = ();

    fn name(&self) -> &'static str {
        "arena sizing"
    }

    /// Stored as f16 whatever `precision` asks, as `CudaBackend::matrix` does.
    fn matrix(&self, rows: usize, cols: usize, _: HostMatrix<'_>, _: Precision) -> Result<(), BackendError> {
        self.weight(rows * cols, 2);
        Ok(())
    }

    fn vector(&self, data: &[f32]) -> Result<(), BackendError> {
        self.weight(data.len(), 4);
        Ok(())
    }

    fn lane(&self) -> Result<(), BackendError> {
        Ok(())
    }

    fn buffer(&self, _: &(), max_rows: usize, cols: usize) -> Result<(), BackendError> {
        self.lock().state.push(max_rows as u64 * cols as u64 * 4);
        Ok(())
    }

    fn rows(&self, _: &()) -> usize {
        0
    }

    fn set_rows(&self, _: &mut (), _: usize) {}

    fn upload(&self, _: &[f32], _: &mut ()) -> Result<(), BackendError> {
        Err(no_ops())
    }

    fn download(&self, _: &(), _: std::ops::Range<usize>, _: &mut [f32]) -> Result<(), BackendError> {
        Err(no_ops())
    }

    fn linear(
        &self,
        _: View<'_, Self>,
        _: &(),
        _: Option<&()>,
        _: Activation,
        _: Write,
        _: &mut (),
    ) -> Result<(), BackendError> {
        Err(no_ops())
    }

    fn layer_norm(&self, _: &(), _: &(), _: &(), _: f32, _: &mut ()) -> Result<(), BackendError> {
        Err(no_ops())
    }

    fn conv1d_gelu(&self, _: &(), _: &(), _: &(), _: usize, _: &mut ()) -> Result<(), BackendError> {
        Err(no_ops())
    }

    fn add_rows(&self, _: &mut (), _: &(), _: usize) -> Result<(), BackendError> {
        Err(no_ops())
    }

    fn embed(&self, _: &[u32], _: usize, _: usize, _: &(), _: &(), _: &mut ()) -> Result<(), BackendError> {
        Err(no_ops())
    }

    fn attention(
        &self,
        _: View<'_, Self>,
        _: View<'_, Self>,
        _: View<'_, Self>,
        _: AttentionShape,
        _: &mut (),
        _: Option<(&mut (), &[usize])>,
    ) -> Result<(), BackendError> {
        Err(no_ops())
    }

    fn copy_rows(&self, _: View<'_, Self>, _: &[usize], _: &mut (), _: &[usize]) -> Result<(), BackendError> {
        Err(no_ops())
    }
}
