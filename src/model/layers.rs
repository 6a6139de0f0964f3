//! The building blocks shared by the encoder and the decoder, each loaded by
//! its CT2 variable name.

use crate::backend::{Activation, Backend, BackendError, HostMatrix, Precision, View, Write};
use crate::model::ct2::{Ct2File, TensorData};
use crate::model::ModelError;

/// Loads a 2-D (or flattened 3-D conv) weight in the requested precision.
pub(crate) fn matrix<B: Backend>(
    b: &B,
    f: &Ct2File,
    name: &str,
    shape: &[usize],
    precision: Precision,
) -> Result<B::Matrix, ModelError> {
    let t = f.get_shaped(name, shape)?;
    let rows = shape[0];
    let cols = shape[1..].iter().product();
    let m = match &t.data {
        TensorData::F16(v) => b.matrix(rows, cols, HostMatrix::F16(v), precision)?,
        TensorData::F32(v) => b.matrix(rows, cols, HostMatrix::F32(v), precision)?,
        _ => {
            // bf16 and quantised (int8 + scale) checkpoints are widened here.
            let wide = dequantize(f, name, t)?;
            b.matrix(rows, cols, HostMatrix::F32(&wide), precision)?
        }
    };
    Ok(m)
}

fn dequantize(f: &Ct2File, name: &str, t: &crate::model::ct2::Tensor) -> Result<Vec<f32>, ModelError> {
    let mut v = t.to_f32();
    if matches!(t.data, TensorData::I8(_) | TensorData::I16(_)) {
        // CT2 quantisation: float = int / scale, one scale per output row (int8)
        // or one for the whole tensor (int16).
        let scale = f.get(&format!("{name}_scale"))?.to_f32();
        let per_row = v.len() / scale.len().max(1);
        for (i, x) in v.iter_mut().enumerate() {
            *x /= scale[i / per_row];
        }
    }
    Ok(v)
}

pub(crate) fn vector<B: Backend>(b: &B, f: &Ct2File, name: &str, len: usize) -> Result<B::Vector, ModelError> {
    let t = f.get_shaped(name, &[len])?;
    Ok(b.vector(&t.to_f32())?)
}

pub struct Linear<B: Backend> {
    pub weight: B::Matrix,
    pub bias: Option<B::Vector>,
}

impl<B: Backend> Linear<B> {
    pub fn load(
        b: &B,
        f: &Ct2File,
        prefix: &str,
        out: usize,
        inp: usize,
        precision: Precision,
    ) -> Result<Self, ModelError> {
        let weight = matrix(b, f, &format!("{prefix}/weight"), &[out, inp], precision)?;
        let bias_name = format!("{prefix}/bias");
        let bias = if f.contains(&bias_name) { Some(vector(b, f, &bias_name, out)?) } else { None };
        Ok(Linear { weight, bias })
    }

    pub fn forward(
        &self,
        b: &B,
        x: View<'_, B>,
        act: Activation,
        write: Write,
        out: &mut B::Buf,
    ) -> Result<(), BackendError> {
        b.linear(x, &self.weight, self.bias.as_ref(), act, write, out)
    }
}

pub struct LayerNorm<B: Backend> {
    pub gamma: B::Vector,
    pub beta: B::Vector,
}

/// Whisper's layer-norm epsilon (CT2's default). `config.json` is not read
/// for it: no Whisper conversion sets another.
pub const LAYER_NORM_EPS: f32 = 1e-5;

impl<B: Backend> LayerNorm<B> {
    pub fn load(b: &B, f: &Ct2File, prefix: &str, d: usize) -> Result<Self, ModelError> {
        Ok(LayerNorm {
            gamma: vector(b, f, &format!("{prefix}/gamma"), d)?,
            beta: vector(b, f, &format!("{prefix}/beta"), d)?,
        })
    }

    pub fn forward(&self, b: &B, x: &B::Buf, out: &mut B::Buf) -> Result<(), BackendError> {
        b.layer_norm(x, &self.gamma, &self.beta, LAYER_NORM_EPS, out)
    }
}

/// Position-wise feed-forward: `x += W₂ · GELU(W₁ · LN(x))`.
pub struct Mlp<B: Backend> {
    pub d: usize,
    pub ln: LayerNorm<B>,
    pub up: Linear<B>,
    pub down: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    pub fn load(b: &B, f: &Ct2File, prefix: &str, d: usize, precision: Precision) -> Result<Self, ModelError> {
        Ok(Mlp {
            d,
            ln: LayerNorm::load(b, f, &format!("{prefix}/layer_norm"), d)?,
            up: Linear::load(b, f, &format!("{prefix}/linear_0"), 4 * d, d, precision)?,
            down: Linear::load(b, f, &format!("{prefix}/linear_1"), d, 4 * d, precision)?,
        })
    }

    /// `x += MLP(LN(x))`, using `h` (width d) and `wide` (width 4d) as scratch.
    pub fn forward(&self, b: &B, x: &mut B::Buf, h: &mut B::Buf, wide: &mut B::Buf) -> Result<(), BackendError> {
        self.ln.forward(b, x, h)?;
        let d = self.d;
        self.up.forward(b, View::cols(h, 0, d), Activation::Gelu, Write::Overwrite, wide)?;
        let f = 4 * d;
        self.down.forward(b, View::cols(wide, 0, f), Activation::None, Write::Accumulate, x)
    }
}
