//! Sentence embeddings from per-token hidden states.

/// Mean of each sequence's hidden states over its unmasked tokens, optionally L2-normalised
/// (as sentence-transformers' Pooling + Normalize modules do).
///
/// `hidden` is `[batch, seq, width]` row-major; `masks[i]` has `seq` entries.
pub fn mean_pool(hidden: &[f32], masks: &[&[u32]], width: usize, normalize: bool) -> Vec<Vec<f32>> {
    masks
        .iter()
        .enumerate()
        .map(|(i, mask)| {
            let seq = mask.len();
            let mut sum = vec![0f32; width];
            let mut count = 0f32;
            for (t, _) in mask.iter().enumerate().filter(|&(_, &m)| m != 0) {
                let row = &hidden[(i * seq + t) * width..][..width];
                sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
                count += 1.0;
            }
            let count = count.max(1e-9);
            sum.iter_mut().for_each(|s| *s /= count);
            if normalize {
                let norm = sum.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                sum.iter_mut().for_each(|s| *s /= norm);
            }
            sum
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_positions_do_not_count() {
        // Two tokens of width 2; the second is padding with a huge value that must be ignored.
        let hidden = [1.0, 3.0, 1000.0, 1000.0];
        let out = mean_pool(&hidden, &[&[1, 0]], 2, false);
        assert_eq!(out, vec![vec![1.0, 3.0]]);
    }

    #[test]
    fn normalised_vectors_have_unit_length() {
        let hidden = [3.0, 4.0];
        let out = mean_pool(&hidden, &[&[1]], 2, true);
        assert_eq!(out, vec![vec![0.6, 0.8]]);
    }
}
