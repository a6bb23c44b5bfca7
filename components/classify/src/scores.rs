//! From logits to ranked scores.

/// Softmax, computed from the largest logit down so that no exponent overflows.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = logits.iter().map(|&x| f64::from(x - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| (e / sum) as f32).collect()
}

/// (class index, score) pairs, best first (ties keep class order), cut to `top_k`.
pub fn ranked(scores: &[f32], top_k: Option<usize>) -> Vec<(usize, f32)> {
    let mut ranked: Vec<(usize, f32)> = scores.iter().copied().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked.truncate(top_k.unwrap_or(usize::MAX));
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_survives_large_logits() {
        let p = softmax(&[1000.0, 1000.0, 0.0]);
        assert!((p[0] - 0.5).abs() < 1e-6 && (p[1] - 0.5).abs() < 1e-6 && p[2] == 0.0, "{p:?}");
        let p = softmax(&[1.0, 2.0, 3.0]);
        let expected = [0.09003057, 0.24472847, 0.66524096];
        for (a, b) in p.iter().zip(expected) {
            assert!((a - b).abs() < 1e-7, "{p:?}");
        }
    }

    #[test]
    fn ranking_is_by_score_then_class_and_cut_at_top_k() {
        assert_eq!(ranked(&[0.2, 0.5, 0.2, 0.1], None), vec![(1, 0.5), (0, 0.2), (2, 0.2), (3, 0.1)]);
        assert_eq!(ranked(&[0.2, 0.5, 0.3], Some(2)), vec![(1, 0.5), (2, 0.3)]);
        assert_eq!(ranked(&[0.2, 0.8], Some(10)).len(), 2);
    }
}
