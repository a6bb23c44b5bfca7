//! Sentence embeddings from per-token hidden states.

/// Mean of each sequence's hidden states over its unmasked tokens, cut to its first `keep`
/// values (Matryoshka truncation) and optionally L2-normalised after the cut (as
/// sentence-transformers' Pooling + Normalize modules and `truncate_dim` do).
///
/// `hidden` is `[batch, seq, width]` row-major; `masks[i]` has `seq` entries; `keep <= width`.
pub fn mean_pool(
    hidden: &[f32],
    masks: &[&[u32]],
    width: usize,
    keep: usize,
    normalize: bool,
) -> Vec<Vec<f32>> {
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
            sum.truncate(keep);
            sum.iter_mut().for_each(|s| *s /= count);
            if normalize {
                normalize_l2(&mut sum);
            }
            sum
        })
        .collect()
}

/// Scales `vector` to unit length (a zero vector stays zero).
pub fn normalize_l2(vector: &mut [f32]) {
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    vector.iter_mut().for_each(|v| *v /= norm);
}

/// Cosine similarity of two vectors of equal length (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norms = a.iter().map(|v| v * v).sum::<f32>().sqrt() * b.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norms == 0.0 { 0.0 } else { dot / norms }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_positions_do_not_count() {
        // Two tokens of width 2; the second is padding with a huge value that must be ignored.
        let hidden = [1.0, 3.0, 1000.0, 1000.0];
        let out = mean_pool(&hidden, &[&[1, 0]], 2, 2, false);
        assert_eq!(out, vec![vec![1.0, 3.0]]);
    }

    #[test]
    fn normalised_vectors_have_unit_length() {
        let hidden = [3.0, 4.0];
        let out = mean_pool(&hidden, &[&[1]], 2, 2, true);
        assert_eq!(out, vec![vec![0.6, 0.8]]);
    }

    #[test]
    fn matryoshka_cuts_before_normalising() {
        let hidden = [3.0, 4.0, 12.0];
        assert_eq!(mean_pool(&hidden, &[&[1]], 3, 2, true), vec![vec![0.6, 0.8]]);
        assert_eq!(mean_pool(&hidden, &[&[1]], 3, 1, false), vec![vec![3.0]]);
    }

    #[test]
    fn cosine_of_parallel_and_orthogonal_vectors() {
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-6);
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 3.0]), 0.0);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
    }
}
