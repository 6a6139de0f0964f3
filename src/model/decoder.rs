//! Whisper's text decoder: token and learned position embeddings, pre-norm
//! blocks of causal self-attention (with a KV cache), cross-attention over the
//! encoder output, and an MLP; logits through the tied embedding matrix.

use crate::backend::{Activation, AttentionShape, Backend, BackendError, Precision, View, Write};
use crate::model::ct2::Ct2File;
use crate::model::layers::{matrix, LayerNorm, Linear, Mlp};
use crate::model::{Dims, ModelError};

/// Where a forward pass copies the cross-attention weights of the requested
/// (layer, head) pairs.
type AlignmentOut<'a> = (&'a [(usize, usize)], &'a mut Vec<f32>);

pub struct DecoderBlock<B: Backend> {
    attn_ln: LayerNorm<B>,
    /// Fused Q;K;V, `[3d, d]`.
    qkv: Linear<B>,
    attn_out: Linear<B>,
    cross_ln: LayerNorm<B>,
    cross_q: Linear<B>,
    /// Fused K;V over the encoder output, `[2d, d]`: run once per window.
    cross_kv: Linear<B>,
    cross_out: Linear<B>,
    mlp: Mlp<B>,
}

pub struct TextDecoder<B: Backend> {
    embeddings: B::Matrix,
    positions: B::Matrix,
    blocks: Vec<DecoderBlock<B>>,
    ln: LayerNorm<B>,
    d: usize,
    heads: usize,
    vocab: usize,
    text_ctx: usize,
    audio_ctx: usize,
}

/// Everything one decoding stream mutates: the cross-attention K/V of the
/// current window, the self-attention cache of every live sequence (beam),
/// and scratch activations — all sized once, at the worst case.
pub struct DecoderState<B: Backend> {
    max_seqs: usize,
    cross: Vec<B::Buf>,
    cross_len: usize,
    kv: Vec<B::Buf>,
    spare: B::Buf,
    /// Tokens held in the cache, per sequence.
    len: usize,
    /// Live sequences.
    seqs: usize,
    x: B::Buf,
    h: B::Buf,
    qkv: B::Buf,
    q: B::Buf,
    attn: B::Buf,
    wide: B::Buf,
    picked: B::Buf,
    last: B::Buf,
    logits: B::Buf,
    probs: B::Buf,
    src_rows: Vec<usize>,
    dst_rows: Vec<usize>,
    probs_host: Vec<f32>,
}

impl<B: Backend> DecoderState<B> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn max_seqs(&self) -> usize {
        self.max_seqs
    }

    /// Encoder positions of the current window (1500 unless shortened).
    pub fn cross_len(&self) -> usize {
        self.cross_len
    }
}

impl<B: Backend> TextDecoder<B> {
    pub fn load(b: &B, f: &Ct2File, dims: &Dims) -> Result<Self, ModelError> {
        let d = dims.d_model;
        // Decoding steps stream every weight once per token: keep them at
        // their stored 16 bits.
        let p = Precision::F16;
        let blocks = (0..dims.decoder_layers)
            .map(|i| {
                let l = format!("decoder/layer_{i}");
                Ok(DecoderBlock {
                    attn_ln: LayerNorm::load(b, f, &format!("{l}/self_attention/layer_norm"), d)?,
                    qkv: Linear::load(b, f, &format!("{l}/self_attention/linear_0"), 3 * d, d, p)?,
                    attn_out: Linear::load(b, f, &format!("{l}/self_attention/linear_1"), d, d, p)?,
                    cross_ln: LayerNorm::load(b, f, &format!("{l}/attention/layer_norm"), d)?,
                    cross_q: Linear::load(b, f, &format!("{l}/attention/linear_0"), d, d, p)?,
                    cross_kv: Linear::load(b, f, &format!("{l}/attention/linear_1"), 2 * d, d, Precision::F32)?,
                    cross_out: Linear::load(b, f, &format!("{l}/attention/linear_2"), d, d, p)?,
                    mlp: Mlp::load(b, f, &format!("{l}/ffn"), d, p)?,
                })
            })
            .collect::<Result<_, ModelError>>()?;
        Ok(TextDecoder {
            embeddings: matrix(b, f, "decoder/embeddings/weight", &[dims.vocab, d], p)?,
            positions: matrix(b, f, "decoder/position_encodings/encodings", &[dims.text_ctx, d], Precision::F32)?,
            blocks,
            ln: LayerNorm::load(b, f, "decoder/layer_norm", d)?,
            d,
            heads: dims.decoder_heads,
            vocab: dims.vocab,
            text_ctx: dims.text_ctx,
            audio_ctx: dims.audio_ctx,
        })
    }

    pub fn state(&self, b: &B, lane: &B::Lane, max_seqs: usize) -> Result<DecoderState<B>, ModelError> {
        let d = self.d;
        let rows = self.text_ctx.max(max_seqs);
        let picks = max_seqs.max(2);
        let cache_rows = max_seqs * self.text_ctx;
        Ok(DecoderState {
            max_seqs,
            cross: (0..self.blocks.len()).map(|_| b.buffer(lane, self.audio_ctx, 2 * d)).collect::<Result<_, _>>()?,
            cross_len: 0,
            kv: (0..self.blocks.len()).map(|_| b.buffer(lane, cache_rows, 2 * d)).collect::<Result<_, _>>()?,
            spare: b.buffer(lane, cache_rows, 2 * d)?,
            len: 0,
            seqs: 1,
            x: b.buffer(lane, rows, d)?,
            h: b.buffer(lane, rows, d)?,
            qkv: b.buffer(lane, rows, 3 * d)?,
            q: b.buffer(lane, rows, d)?,
            attn: b.buffer(lane, rows, d)?,
            wide: b.buffer(lane, rows, 4 * d)?,
            picked: b.buffer(lane, picks, d)?,
            last: b.buffer(lane, picks, d)?,
            logits: b.buffer(lane, picks, self.vocab)?,
            probs: b.buffer(lane, self.heads * self.text_ctx, self.audio_ctx)?,
            src_rows: Vec::with_capacity(cache_rows),
            dst_rows: Vec::with_capacity(cache_rows),
            probs_host: Vec::new(),
        })
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }

    pub fn text_ctx(&self) -> usize {
        self.text_ctx
    }

    /// Computes every layer's cross-attention K/V for a new window and
    /// empties the self-attention cache.
    pub fn set_audio(&self, b: &B, st: &mut DecoderState<B>, encoded: &B::Buf) -> Result<(), BackendError> {
        for (blk, cross) in self.blocks.iter().zip(&mut st.cross) {
            blk.cross_kv.forward(b, View::cols(encoded, 0, self.d), Activation::None, Write::Overwrite, cross)?;
        }
        st.cross_len = b.rows(encoded);
        self.reset(st);
        Ok(())
    }

    /// Forgets the decoded tokens, keeping the window's cross-attention K/V.
    pub fn reset(&self, st: &mut DecoderState<B>) {
        st.len = 0;
        st.seqs = 1;
    }

    /// Feeds `tokens` (`seqs` sequences of equal length, one after the other)
    /// at the next positions and writes the logits of rows `select` (indices
    /// into those tokens) to `logits`, `select.len() × vocab`.
    pub fn forward(
        &self,
        b: &B,
        st: &mut DecoderState<B>,
        tokens: &[u32],
        seqs: usize,
        select: &[usize],
        logits: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        self.run(b, st, tokens, seqs, select, logits, None)
    }

    /// Runs one sequence from position 0 and returns the cross-attention
    /// weights of the given `(layer, head)` pairs: `pairs.len() × tokens.len()`
    /// rows of `audio frames` columns (the alignment heads behind word timestamps).
    pub fn cross_attention_weights(
        &self,
        b: &B,
        st: &mut DecoderState<B>,
        tokens: &[u32],
        pairs: &[(usize, usize)],
    ) -> Result<Vec<f32>, BackendError> {
        self.reset(st);
        let mut out = vec![0.0; pairs.len() * tokens.len() * st.cross_len];
        let mut logits = Vec::new();
        self.run(b, st, tokens, 1, &[], &mut logits, Some((pairs, &mut out)))?;
        Ok(out)
    }

    /// One pass of `tokens` through every block: the self-attention cache
    /// grows by their positions, and only the `select`ed rows reach the
    /// vocabulary projection. `align` asks for the alignment heads' weights.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        b: &B,
        st: &mut DecoderState<B>,
        tokens: &[u32],
        seqs: usize,
        select: &[usize],
        logits: &mut Vec<f32>,
        mut align: Option<AlignmentOut<'_>>,
    ) -> Result<(), BackendError> {
        assert_eq!(seqs, st.seqs, "decoder: {seqs} sequences fed to a state holding {}", st.seqs);
        let q_len = tokens.len() / seqs;
        let pos0 = st.len;
        assert!(pos0 + q_len <= self.text_ctx, "decoder: {} positions exceed {}", pos0 + q_len, self.text_ctx);
        b.embed(tokens, q_len, pos0, &self.embeddings, &self.positions, &mut st.x)?;
        self.cache_rows(st, seqs, q_len, pos0);
        let self_shape = AttentionShape {
            seqs,
            q_len,
            kv_len: pos0 + q_len,
            kv_seq_stride: self.text_ctx,
            heads: self.heads,
            causal: true,
        };
        let cross_shape =
            AttentionShape { seqs, q_len, kv_len: st.cross_len, kv_seq_stride: 0, heads: self.heads, causal: false };
        for (l, blk) in self.blocks.iter().enumerate() {
            self.self_attention(b, l, st, self_shape)?;
            self.cross_attention(b, l, st, cross_shape, align.as_mut())?;
            blk.mlp.forward(b, &mut st.x, &mut st.h, &mut st.wide)?;
        }
        st.len += q_len;
        if select.is_empty() {
            return Ok(());
        }
        self.project(b, st, select, logits)
    }

    /// Rows where this call's K/V enter each sequence's cache: sequences are
    /// `text_ctx` rows apart there, so a beam can be reordered in place.
    fn cache_rows(&self, st: &mut DecoderState<B>, seqs: usize, q_len: usize, pos0: usize) {
        st.src_rows.clear();
        st.dst_rows.clear();
        for s in 0..seqs {
            for i in 0..q_len {
                st.src_rows.push(s * q_len + i);
                st.dst_rows.push(s * self.text_ctx + pos0 + i);
            }
        }
    }

    /// Block `l`'s causal self-attention, residual added to `st.x`. The new
    /// K/V rows go to the cache first, so attention reads past and present
    /// from one place.
    fn self_attention(
        &self,
        b: &B,
        l: usize,
        st: &mut DecoderState<B>,
        shape: AttentionShape,
    ) -> Result<(), BackendError> {
        let (d, blk) = (self.d, &self.blocks[l]);
        blk.attn_ln.forward(b, &st.x, &mut st.h)?;
        blk.qkv.forward(b, View::cols(&st.h, 0, d), Activation::None, Write::Overwrite, &mut st.qkv)?;
        b.copy_rows(View::cols(&st.qkv, d, 2 * d), &st.src_rows, &mut st.kv[l], &st.dst_rows)?;
        b.attention(
            View::cols(&st.qkv, 0, d),
            View::cols(&st.kv[l], 0, d),
            View::cols(&st.kv[l], d, d),
            shape,
            &mut st.attn,
            None,
        )?;
        blk.attn_out.forward(b, View::cols(&st.attn, 0, d), Activation::None, Write::Accumulate, &mut st.x)
    }

    /// Block `l`'s attention over the window's audio, residual added to
    /// `st.x`; the attention weights of this layer's alignment heads are
    /// kept when `align` asks for them.
    fn cross_attention(
        &self,
        b: &B,
        l: usize,
        st: &mut DecoderState<B>,
        shape: AttentionShape,
        align: Option<&mut AlignmentOut<'_>>,
    ) -> Result<(), BackendError> {
        let (d, blk) = (self.d, &self.blocks[l]);
        blk.cross_ln.forward(b, &st.x, &mut st.h)?;
        blk.cross_q.forward(b, View::cols(&st.h, 0, d), Activation::None, Write::Overwrite, &mut st.q)?;
        // Empty (no allocation) on decoding steps, which never align.
        let heads: Vec<usize> = match &align {
            Some((pairs, _)) => pairs.iter().filter(|p| p.0 == l).map(|p| p.1).collect(),
            None => Vec::new(),
        };
        let probs = if heads.is_empty() { None } else { Some((&mut st.probs, heads.as_slice())) };
        b.attention(
            View::cols(&st.q, 0, d),
            View::cols(&st.cross[l], 0, d),
            View::cols(&st.cross[l], d, d),
            shape,
            &mut st.attn,
            probs,
        )?;
        if let Some((pairs, out)) = align {
            self.copy_alignment(b, l, st, shape.q_len, &heads, pairs, out)?;
        }
        blk.cross_out.forward(b, View::cols(&st.attn, 0, d), Activation::None, Write::Accumulate, &mut st.x)
    }

    /// Copies layer `l`'s heads to their slots in the caller's order.
    /// The backend packs each head's `q_len × cross_len` block from the
    /// start of the buffer, whose rows are `audio_ctx` wide: whole rows are
    /// downloaded, the packed prefix read.
    #[allow(clippy::too_many_arguments)]
    fn copy_alignment(
        &self,
        b: &B,
        l: usize,
        st: &mut DecoderState<B>,
        q_len: usize,
        heads: &[usize],
        pairs: &[(usize, usize)],
        out: &mut [f32],
    ) -> Result<(), BackendError> {
        let block = q_len * st.cross_len;
        if heads.is_empty() {
            return Ok(());
        }
        st.probs_host.resize(heads.len() * q_len * self.audio_ctx, 0.0);
        b.download(&st.probs, 0..heads.len() * q_len, &mut st.probs_host)?;
        for (slot, &(pl, ph)) in pairs.iter().enumerate() {
            if pl == l {
                let k = heads.iter().position(|&h| h == ph).unwrap_or(0);
                out[slot * block..(slot + 1) * block].copy_from_slice(&st.probs_host[k * block..(k + 1) * block]);
            }
        }
        Ok(())
    }

    /// The final norm and the vocabulary projection, for the `select`ed rows
    /// only: the projection is the largest matrix, and a step needs one row
    /// per sequence.
    fn project(
        &self,
        b: &B,
        st: &mut DecoderState<B>,
        select: &[usize],
        logits: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        let d = self.d;
        st.src_rows.clear();
        st.src_rows.extend_from_slice(select);
        st.dst_rows.clear();
        st.dst_rows.extend(0..select.len());
        b.set_rows(&mut st.picked, select.len());
        b.copy_rows(View::cols(&st.x, 0, d), &st.src_rows, &mut st.picked, &st.dst_rows)?;
        self.ln.forward(b, &st.picked, &mut st.last)?;
        b.linear(
            View::cols(&st.last, 0, d),
            &self.embeddings,
            None,
            Activation::None,
            Write::Overwrite,
            &mut st.logits,
        )?;
        logits.resize(select.len() * self.vocab, 0.0);
        b.download(&st.logits, 0..select.len(), logits)
    }

    /// Keeps sequence `order[j]` as the new sequence `j` (beam search).
    pub fn reorder(&self, b: &B, st: &mut DecoderState<B>, order: &[usize]) -> Result<(), BackendError> {
        assert!(order.len() <= st.max_seqs);
        st.src_rows.clear();
        st.dst_rows.clear();
        for (j, &from) in order.iter().enumerate() {
            for p in 0..st.len {
                st.src_rows.push(from * self.text_ctx + p);
                st.dst_rows.push(j * self.text_ctx + p);
            }
        }
        let w = 2 * self.d;
        for kv in &mut st.kv {
            b.set_rows(&mut st.spare, 0);
            b.copy_rows(View::cols(kv, 0, w), &st.src_rows, &mut st.spare, &st.dst_rows)?;
            b.copy_rows(View::cols(&st.spare, 0, w), &st.dst_rows, kv, &st.dst_rows)?;
        }
        st.seqs = order.len();
        Ok(())
    }
}
