//! The tokenizer component: Hugging Face `tokenizers` behind the `edgeinfer:text/tokenize` WIT
//! interface. Pure preprocessing: it imports nothing host-specific, so it composes into any handler.

use std::cell::RefCell;

use tokenizers::utils::truncation::{TruncationDirection, TruncationParams, TruncationStrategy};
use tokenizers::{EncodeInput, Encoding as HfEncoding, Tokenizer as HfTokenizer};

wit_bindgen::generate!({
    world: "tokenizer",
    path: "../../wit",
});

use exports::edgeinfer::text::tokenize::{
    EncodeOptions, Encoding, Error, Guest, GuestTokenizer, Token, Tokenizer, TruncationDirection as Direction,
};

/// Pad token used when `tokenizer.json` configures no padding (BERT's `[PAD]` is id 0).
const DEFAULT_PAD_ID: u32 = 0;

struct Component;

impl Guest for Component {
    type Tokenizer = TextTokenizer;
}

/// A parsed `tokenizer.json` with its own padding and truncation removed.
pub struct TextTokenizer {
    /// Mutable because truncation is a tokenizer setting in `tokenizers`, chosen per call here.
    inner: RefCell<HfTokenizer>,
    pad_id: u32,
    pad_type_id: u32,
}

impl GuestTokenizer for TextTokenizer {
    fn from_json(json: Vec<u8>) -> Result<Tokenizer, Error> {
        // Components run single-threaded: keep `tokenizers` off its rayon paths.
        tokenizers::utils::parallelism::set_parallelism(false);
        let mut inner = HfTokenizer::from_bytes(&json).map_err(|e| Error::InvalidTokenizer(e.to_string()))?;
        let (pad_id, pad_type_id) =
            inner.get_padding().map(|p| (p.pad_id, p.pad_type_id)).unwrap_or((DEFAULT_PAD_ID, 0));
        // Files ship with padding/truncation fixed (e.g. 128): callers decide per request instead.
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| Error::InvalidTokenizer(e.to_string()))?;
        Ok(Tokenizer::new(TextTokenizer { inner: RefCell::new(inner), pad_id, pad_type_id }))
    }

    fn encode_batch(&self, texts: Vec<String>, options: EncodeOptions) -> Result<Vec<Encoding>, Error> {
        if options.max_length == Some(0) {
            return Err(Error::InvalidOptions("max-length must be at least 1".into()));
        }
        let inputs = texts.iter().map(|text| EncodeInput::Single(text.as_str().into()));
        self.encode_all(inputs, options)
    }

    fn encode_pairs(
        &self,
        pairs: Vec<(String, String)>,
        options: EncodeOptions,
    ) -> Result<Vec<Encoding>, Error> {
        if options.max_length == Some(0) {
            return Err(Error::InvalidOptions("max-length must be at least 1".into()));
        }
        let inputs = pairs.iter().map(|(a, b)| EncodeInput::Dual(a.as_str().into(), b.as_str().into()));
        self.encode_all(inputs, options)
    }

    fn pad_id(&self) -> u32 {
        self.pad_id
    }

    fn vocab_size(&self) -> u32 {
        self.inner.borrow().get_vocab_size(true) as u32
    }

    fn tokens(&self, text: String, add_special_tokens: bool) -> Result<Vec<Token>, Error> {
        let encoding = self
            .inner
            .borrow()
            .encode(text.as_str(), add_special_tokens)
            .map_err(|e| Error::EncodeFailed(e.to_string()))?;
        let tokens = encoding
            .get_ids()
            .iter()
            .zip(encoding.get_tokens())
            .zip(encoding.get_special_tokens_mask())
            .zip(encoding.get_offsets())
            .map(|(((&id, text), &special), &(start, stop))| Token {
                id,
                text: text.clone(),
                special: special != 0,
                offsets: (start as u32, stop as u32),
            })
            .collect();
        Ok(tokens)
    }

    fn decode(&self, ids: Vec<u32>, skip_special_tokens: bool) -> Result<String, Error> {
        let tokenizer = self.inner.borrow();
        // `tokenizers` skips ids it does not know; a client sending one has a bug worth naming.
        if let Some((i, id)) = ids.iter().enumerate().find(|&(_, &id)| tokenizer.id_to_token(id).is_none()) {
            return Err(Error::InvalidOptions(format!("id {id} at position {i} is not in the vocabulary")));
        }
        tokenizer.decode(&ids, skip_special_tokens).map_err(|e| Error::EncodeFailed(e.to_string()))
    }
}

impl TextTokenizer {
    /// Encodes each input, cutting over-long ones at `max-length` and padding to the longest.
    fn encode_all<'s>(
        &self,
        inputs: impl Iterator<Item = EncodeInput<'s>>,
        options: EncodeOptions,
    ) -> Result<Vec<Encoding>, Error> {
        let mut tokenizer = self.inner.borrow_mut();
        let mut encodings = Vec::new();
        for input in inputs {
            let full = tokenizer
                .encode(input.clone(), options.add_special_tokens)
                .map_err(|e| Error::EncodeFailed(e.to_string()))?;
            let length_before_truncation = full.len() as u32;
            let encoding = match options.max_length {
                // Truncation must happen before special tokens are added, so re-encode the
                // (rare) over-long inputs with truncation on rather than cutting `full`.
                Some(max) if length_before_truncation > max => encode_truncated(
                    &mut tokenizer,
                    input,
                    max,
                    options.truncation_direction,
                    options.add_special_tokens,
                )?,
                _ => full,
            };
            encodings.push((encoding, length_before_truncation));
        }
        let target = if options.pad_to_longest {
            encodings.iter().map(|(e, _)| e.len()).max().unwrap_or(0)
        } else {
            0
        };
        Ok(encodings.into_iter().map(|(e, before)| self.to_wit(e, before, target)).collect())
    }

    /// Converts to the WIT record, right-padding to `target` tokens.
    fn to_wit(&self, e: HfEncoding, length_before_truncation: u32, target: usize) -> Encoding {
        let pad = target.saturating_sub(e.len());
        let mut ids = e.get_ids().to_vec();
        let mut attention_mask = e.get_attention_mask().to_vec();
        let mut type_ids = e.get_type_ids().to_vec();
        let mut offsets: Vec<(u32, u32)> =
            e.get_offsets().iter().map(|&(s, t)| (s as u32, t as u32)).collect();
        ids.extend(std::iter::repeat_n(self.pad_id, pad));
        attention_mask.extend(std::iter::repeat_n(0, pad));
        type_ids.extend(std::iter::repeat_n(self.pad_type_id, pad));
        offsets.extend(std::iter::repeat_n((0, 0), pad));
        Encoding { ids, attention_mask, type_ids, offsets, length_before_truncation }
    }
}

fn encode_truncated(
    tokenizer: &mut HfTokenizer,
    input: EncodeInput<'_>,
    max_length: u32,
    direction: Direction,
    add_special_tokens: bool,
) -> Result<HfEncoding, Error> {
    let params = TruncationParams {
        direction: match direction {
            Direction::Right => TruncationDirection::Right,
            Direction::Left => TruncationDirection::Left,
        },
        max_length: max_length as usize,
        strategy: TruncationStrategy::LongestFirst,
        stride: 0,
    };
    tokenizer.with_truncation(Some(params)).map_err(|e| Error::InvalidOptions(e.to_string()))?;
    let result = tokenizer.encode(input, add_special_tokens);
    // Leave the shared tokenizer untruncated for the next text.
    let _ = tokenizer.with_truncation(None);
    result.map_err(|e| Error::EncodeFailed(e.to_string()))
}

export!(Component);
