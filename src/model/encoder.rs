//! Whisper's audio encoder: a two-convolution stem over the log-mel
//! spectrogram, fixed sinusoidal positions, and pre-norm transformer blocks.

use crate::backend::{Activation, AttentionShape, Backend, BackendError, Precision, View, Write};
use crate::model::ct2::Ct2File;
use crate::model::layers::{matrix, vector, LayerNorm, Linear, Mlp};
use crate::model::{Dims, ModelError};

/// One encoder block: `x += SelfAttn(LN(x)); x += MLP(LN(x))`.
pub struct EncoderBlock<B: Backend> {
    attn_ln: LayerNorm<B>,
    /// Fused Q;K;V projection, `[3d, d]` (CT2 `self_attention/linear_0`).
    qkv: Linear<B>,
    out: Linear<B>,
    mlp: Mlp<B>,
}

pub struct AudioEncoder<B: Backend> {
    conv1_w: B::Matrix,
    conv1_b: B::Vector,
    conv2_w: B::Matrix,
    conv2_b: B::Vector,
    positions: B::Matrix,
    blocks: Vec<EncoderBlock<B>>,
    ln_post: LayerNorm<B>,
    d: usize,
    heads: usize,
}

/// The encoder's activations for one 30 s window, sized once.
pub struct EncoderState<B: Backend> {
    mel: B::Buf,
    conv: B::Buf,
    x: B::Buf,
    h: B::Buf,
    qkv: B::Buf,
    attn: B::Buf,
    wide: B::Buf,
    /// The encoder output `[n_audio_ctx, d]` after the final LayerNorm.
    pub output: B::Buf,
}

impl<B: Backend> AudioEncoder<B> {
    /// `int8`: the blocks' linear layers in int8 (see [`LoadOptions`]).
    pub fn load(b: &B, f: &Ct2File, dims: &Dims, int8: bool) -> Result<Self, ModelError> {
        let d = dims.d_model;
        // The encoder runs large matrix products: f32 weights feed GEMM
        // directly. The convolutions and the positions stay f32 always.
        let p = Precision::F32;
        let lin = if int8 { Precision::I8 } else { p };
        let blocks = (0..dims.encoder_layers)
            .map(|i| {
                let l = format!("encoder/layer_{i}");
                Ok(EncoderBlock {
                    attn_ln: LayerNorm::load(b, f, &format!("{l}/self_attention/layer_norm"), d)?,
                    qkv: Linear::load(b, f, &format!("{l}/self_attention/linear_0"), 3 * d, d, lin)?,
                    out: Linear::load(b, f, &format!("{l}/self_attention/linear_1"), d, d, lin)?,
                    mlp: Mlp::load(b, f, &format!("{l}/ffn"), d, lin)?,
                })
            })
            .collect::<Result<_, ModelError>>()?;
        Ok(AudioEncoder {
            conv1_w: matrix(b, f, "encoder/conv1/weight", &[d, dims.n_mels, 3], p)?,
            conv1_b: vector(b, f, "encoder/conv1/bias", d)?,
            conv2_w: matrix(b, f, "encoder/conv2/weight", &[d, d, 3], p)?,
            conv2_b: vector(b, f, "encoder/conv2/bias", d)?,
            positions: matrix(b, f, "encoder/position_encodings/encodings", &[dims.audio_ctx, d], p)?,
            blocks,
            ln_post: LayerNorm::load(b, f, "encoder/layer_norm", d)?,
            d,
            heads: dims.encoder_heads,
        })
    }

    pub fn state(&self, b: &B, lane: &B::Lane, dims: &Dims) -> Result<EncoderState<B>, ModelError> {
        let (t, d) = (dims.audio_ctx, self.d);
        Ok(EncoderState {
            mel: b.buffer(lane, 2 * t, dims.n_mels)?,
            conv: b.buffer(lane, 2 * t, d)?,
            x: b.buffer(lane, t, d)?,
            h: b.buffer(lane, t, d)?,
            qkv: b.buffer(lane, t, 3 * d)?,
            attn: b.buffer(lane, t, d)?,
            wide: b.buffer(lane, t, 4 * d)?,
            output: b.buffer(lane, t, d)?,
        })
    }

    /// Encodes one window of up to `2 · n_audio_ctx` mel frames (an even
    /// number), time-major (`mel[t · n_mels + m]`), into `st.output`, one row
    /// per two frames; a shorter input uses the first positions only.
    pub fn forward(&self, b: &B, mel: &[f32], st: &mut EncoderState<B>) -> Result<(), BackendError> {
        let d = self.d;
        b.upload(mel, &mut st.mel)?;
        b.conv1d_gelu(&st.mel, &self.conv1_w, &self.conv1_b, 1, &mut st.conv)?;
        b.conv1d_gelu(&st.conv, &self.conv2_w, &self.conv2_b, 2, &mut st.x)?;
        b.add_rows(&mut st.x, &self.positions, 0)?;
        let t = b.rows(&st.x);
        for blk in &self.blocks {
            blk.attn_ln.forward(b, &st.x, &mut st.h)?;
            blk.qkv.forward(b, View::cols(&st.h, 0, d), Activation::None, Write::Overwrite, &mut st.qkv)?;
            let shape =
                AttentionShape { seqs: 1, q_len: t, kv_len: t, kv_seq_stride: 0, heads: self.heads, causal: false };
            b.attention(
                View::cols(&st.qkv, 0, d),
                View::cols(&st.qkv, d, d),
                View::cols(&st.qkv, 2 * d, d),
                shape,
                &mut st.attn,
                None,
            )?;
            blk.out.forward(b, View::cols(&st.attn, 0, d), Activation::None, Write::Accumulate, &mut st.x)?;
            blk.mlp.forward(b, &mut st.x, &mut st.h, &mut st.wide)?;
        }
        self.ln_post.forward(b, &st.x, &mut st.output)
    }
}
