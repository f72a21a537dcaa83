//! CLIP's tokenizer (Radford et al. 2021): byte-level BPE over a 49,408-token vocabulary,
//! as OpenCLIP's `SimpleTokenizer` (`tokenizer.py`, clean = "lower") computes it, with the
//! vocabulary file both OpenAI's CLIP and OpenCLIP ship (`assets/bpe_simple_vocab_16e6.txt.gz`,
//! MIT licence, OpenAI), built into the binary.
//!
//! text -> clean (HTML entities twice, NFC, curly quotes straight, whitespace runs to one
//! space, lower case) -> pieces by CLIP's pattern -> each piece's UTF-8 bytes as printable
//! characters -> BPE merges by rank -> ids; `[SOT] ids [EOT]`, zero-padded or cut to the
//! context (77), the last kept token then EOT. Of ftfy's repairs, OpenCLIP's first step, only
//! the ones class names meet are made (no mojibake repair).
use anyhow::{Context, Result};
use regex::Regex;
use std::collections::HashMap;
use std::io::Read;
use std::sync::{Mutex, OnceLock};
use tch::Tensor;

static VOCAB: &[u8] = include_bytes!("../../assets/bpe_simple_vocab_16e6.txt.gz");

/// CLIP's context length.
pub const CONTEXT: usize = 77;

pub struct Tokenizer {
    encoder: HashMap<String, i64>,
    ranks: HashMap<(String, String), usize>,
    /// Byte b -> the printable character that stands for it.
    bytes: [char; 256],
    pattern: Regex,
    cache: Mutex<HashMap<String, Vec<i64>>>,
    pub sot: i64,
    pub eot: i64,
}

/// GPT-2's byte-to-character table: printable Latin-1 bytes stand for themselves, the others
/// for the characters from U+0100 on, in byte order.
fn bytes_to_unicode() -> Vec<(u8, char)> {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let mut out: Vec<(u8, char)> = (0..256u32).filter(|&b| printable(b)).map(|b| (b as u8, char::from_u32(b).unwrap())).collect();
    let mut n = 0;
    for b in 0..256u32 {
        if !printable(b) {
            out.push((b as u8, char::from_u32(256 + n).unwrap()));
            n += 1;
        }
    }
    out
}

impl Tokenizer {
    /// The tokenizer of CLIP's vocabulary (built once).
    pub fn clip() -> &'static Tokenizer {
        static T: OnceLock<Tokenizer> = OnceLock::new();
        T.get_or_init(|| Tokenizer::from_gz(VOCAB).expect("the built-in CLIP vocabulary reads"))
    }

    fn from_gz(gz: &[u8]) -> Result<Tokenizer> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(gz).read_to_string(&mut text).context("CLIP vocabulary: not gzip-compressed UTF-8")?;
        // OpenCLIP: merges = lines[1 : 49152 - 256 - 2 + 1].
        let merges: Vec<(String, String)> = text
            .split('\n')
            .skip(1)
            .take(49152 - 256 - 2)
            .map(|l| {
                let mut it = l.split(' ');
                Some((it.next()?.to_string(), it.next()?.to_string()))
            })
            .collect::<Option<_>>()
            .context("CLIP vocabulary: a merge line is not two symbols")?;
        let table = bytes_to_unicode();
        let mut bytes = ['\0'; 256];
        for &(b, c) in &table {
            bytes[b as usize] = c;
        }
        let mut vocab: Vec<String> = table.iter().map(|&(_, c)| c.to_string()).collect();
        vocab.extend(table.iter().map(|&(_, c)| format!("{c}</w>")));
        vocab.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        vocab.extend(["<start_of_text>".to_string(), "<end_of_text>".to_string()]);
        let encoder: HashMap<String, i64> = vocab.into_iter().enumerate().map(|(i, v)| (v, i as i64)).collect();
        let ranks = merges.into_iter().enumerate().map(|(i, m)| (m, i)).collect();
        let pattern = Regex::new(r"(?i)<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")?;
        let (sot, eot) = (encoder["<start_of_text>"], encoder["<end_of_text>"]);
        Ok(Tokenizer { encoder, ranks, bytes, pattern, cache: Mutex::new(HashMap::new()), sot, eot })
    }

    pub fn vocab_size(&self) -> usize {
        self.encoder.len()
    }

    /// The ids of `text` (no SOT / EOT).
    pub fn encode(&self, text: &str) -> Vec<i64> {
        let text = clean(text);
        let mut out = Vec::new();
        for piece in self.pattern.find_iter(&text) {
            let piece = piece.as_str();
            if piece == "<start_of_text>" || piece == "<end_of_text>" {
                out.push(self.encoder[piece]);
                continue;
            }
            let mapped: String = piece.bytes().map(|b| self.bytes[b as usize]).collect();
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            let ids = cache.entry(mapped.clone()).or_insert_with(|| self.bpe(&mapped).iter().map(|s| self.encoder[s.as_str()]).collect());
            out.extend_from_slice(ids);
        }
        out
    }

    /// A piece's symbols after merging, lowest rank first, as OpenCLIP's `bpe`.
    fn bpe(&self, piece: &str) -> Vec<String> {
        let chars: Vec<char> = piece.chars().collect();
        let mut word: Vec<String> = chars.iter().map(char::to_string).collect();
        if let Some(last) = word.last_mut() {
            last.push_str("</w>");
        }
        while word.len() > 1 {
            let best = word.windows(2).filter_map(|p| self.ranks.get(&(p[0].clone(), p[1].clone())).map(|&r| (r, p[0].clone(), p[1].clone()))).min();
            let Some((_, a, b)) = best else { break };
            let mut merged = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == a && word[i + 1] == b {
                    merged.push(format!("{a}{b}"));
                    i += 2;
                } else {
                    merged.push(word[i].clone());
                    i += 1;
                }
            }
            word = merged;
        }
        word
    }

    /// `texts` as a N x `context` tensor of ids: SOT, the text's ids, EOT, zeros after; a text
    /// too long is cut and ends in EOT (OpenCLIP's `tokenize`).
    pub fn tokenize(&self, texts: &[String], context: usize) -> Tensor {
        let mut ids = vec![0i64; texts.len() * context];
        for (row, text) in ids.chunks_mut(context).zip(texts) {
            let mut t = vec![self.sot];
            t.extend(self.encode(text));
            t.push(self.eot);
            if t.len() > context {
                t.truncate(context);
                t[context - 1] = self.eot;
            }
            row[..t.len()].copy_from_slice(&t);
        }
        Tensor::from_slice(&ids).view([texts.len() as i64, context as i64])
    }
}

/// OpenCLIP's `_clean_lower` without ftfy's mojibake repair.
fn clean(text: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let text = html_unescape(&html_unescape(text));
    // ftfy: NFC, and curly quotes made straight.
    let text: String = text
        .nfc()
        .map(|c| match c {
            '\u{2018}' | '\u{2019}' | '\u{201a}' | '\u{201b}' => '\'',
            '\u{201c}' | '\u{201d}' | '\u{201e}' | '\u{201f}' => '"',
            c => c,
        })
        .collect();
    text.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

/// Python's `html.unescape` for the entities text meets: `&amp;` `&lt;` `&gt;` `&quot;`
/// `&apos;` `&nbsp;` and numeric ones (`&#39;`, `&#x27;`).
fn html_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let end = rest[1..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '#')).map(|e| e + 1).unwrap_or(rest.len());
        let name = &rest[1..end];
        let semi = rest[end..].starts_with(';');
        let ch = match name {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" if semi => Some('\''),
            "nbsp" => Some('\u{a0}'),
            n if n.starts_with("#x") || n.starts_with("#X") => u32::from_str_radix(&n[2..], 16).ok().and_then(char::from_u32),
            n if n.starts_with('#') => n[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match ch {
            Some(c) => {
                out.push(c);
                rest = &rest[end + semi as usize..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vocabulary_has_clips_49408_tokens_and_its_special_ids() {
        let t = Tokenizer::clip();
        assert_eq!(t.vocab_size(), 49408);
        assert_eq!((t.sot, t.eot), (49406, 49407));
    }

    #[test]
    fn entities_and_quotes_are_cleaned_as_ftfy_and_html_do() {
        assert_eq!(clean("  Tom&amp;amp;Jerry\u{2019}s  &#39;cat&#x27;\n"), "tom&jerry's 'cat'");
        assert_eq!(html_unescape("a & b &unknown; &lt"), "a & b &unknown; <");
    }
}
