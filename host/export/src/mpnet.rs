//! MPNet (all-mpnet-base-v2) as an ONNX graph built from a Hugging Face checkpoint: the encoder
//! of `modeling_mpnet` with standard opset-17 operators. It differs from BERT in three places:
//! position ids count non-padding tokens from `pad_token_id + 1`, there are no token types, and
//! every layer's attention adds one learned bias per head and relative-position bucket.

use anyhow::{Result, ensure};

use super::bert::{self, BertConfig, LayerNames, Weights};
use super::proto::{AttributeProto as Attr, GraphBuilder, INT64};

/// Relative distances at or beyond this share the last bucket (`max_distance` in MPNet).
const MAX_DISTANCE: f32 = 128.0;

/// The bucket of a relative position (`key - query`) as MPNet computes it: half the buckets for
/// keys after the query, exact buckets for small distances, logarithmic ones up to `MAX_DISTANCE`.
/// Computed in f32 like the reference (it agrees with f64 for every distance up to 1,023).
pub fn relative_position_bucket(relative_position: i64, num_buckets: usize) -> usize {
    let half = (num_buckets / 2) as i64;
    let n = -relative_position;
    let mut bucket = if n < 0 { half } else { 0 };
    let n = n.abs();
    let max_exact = half / 2;
    bucket += if n < max_exact {
        n
    } else {
        let log_ratio = (n as f32 / max_exact as f32).ln() / (MAX_DISTANCE / max_exact as f32).ln();
        let large = max_exact + (log_ratio * (half - max_exact) as f32) as i64;
        large.min(half - 1)
    };
    bucket as usize
}

/// Builds the encoder over the graph inputs `input_ids` and `attention_mask` (int64 [batch, seq])
/// and returns the name of its [batch, seq, hidden] output. Sequences may be as long as the
/// position table allows (`max_position_embeddings - pad_token_id - 1` tokens).
pub fn encoder(g: &mut GraphBuilder, config: &BertConfig, weights: &Weights) -> Result<String> {
    let hidden = config.hidden_size;
    let heads = config.num_attention_heads;

    let (shape, word) = weights.get("embeddings.word_embeddings.weight", false)?;
    ensure!(shape.len() == 2 && shape[1] == hidden, "word embeddings are {shape:?}, hidden size is {hidden}");
    let word = g.weight("embeddings.word", &shape, &word);
    let (shape, position) = weights.get("embeddings.position_embeddings.weight", false)?;
    ensure!(shape.len() == 2 && shape[1] == hidden, "position embeddings are {shape:?}");
    let max_tokens = shape[0] as i64 - config.pad_token_id - 1;
    ensure!(max_tokens > 0, "the position table has {} rows for pad id {}", shape[0], config.pad_token_id);
    let position = g.weight("embeddings.position", &shape, &position);

    // Position ids: pad + the running count of non-padding tokens; padding itself gets pad.
    let pad = g.int64_scalar("const.pad_id", config.pad_token_id);
    let is_pad = g.op("Equal", "is_pad", &["input_ids", &pad], vec![]);
    let is_token = g.op("Not", "is_token", &[&is_pad], vec![]);
    let is_token = g.op("Cast", "is_token", &[&is_token], vec![Attr::int("to", INT64 as i64)]);
    let axis1 = g.int64_scalar("const.axis_1_scalar", 1);
    let count = g.op("CumSum", "token_count", &[&is_token, &axis1], vec![]);
    let count = g.op("Mul", "token_count", &[&count, &is_token], vec![]);
    let position_ids = g.op("Add", "position_ids", &[&count, &pad], vec![]);

    let words = g.op("Gather", "word_embeddings", &[&word, "input_ids"], vec![Attr::int("axis", 0)]);
    let positions =
        g.op("Gather", "position_embeddings", &[&position, &position_ids], vec![Attr::int("axis", 0)]);
    let sum = g.op("Add", "embeddings", &[&words, &positions], vec![]);
    let mut x = bert::layer_norm(g, weights, &sum, "embeddings.LayerNorm", config.layer_norm_eps)?;

    // The relative-position bias, the same for every layer: a table of each head's bias by
    // distance (key - query, offset by max_tokens - 1), gathered into [1, heads, seq, seq].
    let (shape, bucket_bias) = weights.get("encoder.relative_attention_bias.weight", false)?;
    let buckets = config.relative_attention_num_buckets;
    ensure!(
        buckets >= 4 && buckets.is_multiple_of(2),
        "relative_attention_num_buckets {buckets} must be even and at least 4"
    );
    ensure!(shape == [buckets, heads], "relative_attention_bias is {shape:?}, expected [{buckets}, {heads}]");
    let distances = 2 * max_tokens as usize - 1;
    let mut by_distance = Vec::with_capacity(distances * heads);
    for d in 0..distances {
        let bucket = relative_position_bucket(d as i64 - (max_tokens - 1), buckets);
        by_distance.extend_from_slice(&bucket_bias[bucket * heads..(bucket + 1) * heads]);
    }
    let by_distance = g.weight("encoder.relative_bias_by_distance", &[distances, heads], &by_distance);
    let seq_len = g.op("Shape", "seq_len", &["input_ids"], vec![Attr::int("start", 1), Attr::int("end", 2)]);
    let seq_len = g.op("Squeeze", "seq_len", &[&seq_len], vec![]);
    let zero = g.int64_scalar("const.zero", 0);
    let one = g.int64_scalar("const.one_i64", 1);
    let steps = g.op("Range", "token_index", &[&zero, &seq_len, &one], vec![]);
    let row = g.int64s("const.axis_0", &[0]);
    let column = g.int64s("const.axis_1", &[1]);
    let keys = g.op("Unsqueeze", "key_index", &[&steps, &row], vec![]);
    let queries = g.op("Unsqueeze", "query_index", &[&steps, &column], vec![]);
    let relative = g.op("Sub", "relative_position", &[&keys, &queries], vec![]);
    let offset = g.int64_scalar("const.distance_offset", max_tokens - 1);
    let relative = g.op("Add", "relative_position", &[&relative, &offset], vec![]);
    let position_bias =
        g.op("Gather", "position_bias", &[&by_distance, &relative], vec![Attr::int("axis", 0)]);
    let position_bias =
        g.op("Transpose", "position_bias", &[&position_bias], vec![Attr::ints("perm", &[2, 0, 1])]);
    let position_bias = g.op("Unsqueeze", "position_bias", &[&position_bias, &row], vec![]);
    // Added to the scores one after the other, as MPNet does: summed once here they would make a
    // [batch, heads, seq, seq] tensor that lives through every layer.
    let mask_bias = bert::attention_mask_bias(g);

    for layer in 0..config.num_hidden_layers {
        let p = format!("encoder.layer.{layer}");
        let names = LayerNames {
            query: format!("{p}.attention.attn.q"),
            key: format!("{p}.attention.attn.k"),
            value: format!("{p}.attention.attn.v"),
            attention_output: format!("{p}.attention.attn.o"),
            attention_norm: format!("{p}.attention.LayerNorm"),
            intermediate: format!("{p}.intermediate.dense"),
            output: format!("{p}.output.dense"),
            output_norm: format!("{p}.output.LayerNorm"),
        };
        x = bert::transformer_layer(g, config, weights, &x, &[&position_bias, &mask_bias], &names)?;
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::relative_position_bucket;

    #[test]
    fn buckets_follow_mpnet() {
        // Keys before the query (key - query < 0) use buckets 0..16, keys after it 16..32;
        // distances under 8 are exact, then logarithmic up to 128, then the last bucket.
        let bucket = |d| relative_position_bucket(d, 32);
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(-1), 1);
        assert_eq!(bucket(-7), 7);
        assert_eq!(bucket(1), 17);
        assert_eq!(bucket(7), 23);
        // 8 + floor(ln(n / 8) / ln(16) * 8): n = 8 -> 8, 16 -> 10, 32 -> 12, 127 -> 15.
        assert_eq!(bucket(-8), 8);
        assert_eq!(bucket(-16), 10);
        assert_eq!(bucket(-32), 12);
        assert_eq!(bucket(-127), 15);
        assert_eq!(bucket(-500), 15);
        assert_eq!(bucket(16), 26);
        assert_eq!(bucket(511), 31);
    }
}
