//! CLIP's text tower (Radford et al. 2021) as OpenAI's CLIP and OpenCLIP name it, read from
//! a whole CLIP state dict: `token_embedding`, `positional_embedding`,
//! `transformer.resblocks.N.*` (the image tower's blocks), `ln_final`, `text_projection`.
//!
//! ids -> token embedding + position embedding -> L pre-norm blocks, each token attending to
//! itself and the ones before it -> LN -> the row of the end-of-text token (the largest id)
//! -> x W_proj: the text embedding, in the space of the image tower's projected features.
//! A class's embedding is the mean of its prompts' unit embeddings, made a unit vector again
//! (CLIP's prompt ensembling; one template: that prompt's).
use super::tokenizer::{Tokenizer, CONTEXT};
use super::vit::{at, Affine, Block, Layout, VitSpec};
use super::weights::read_state_dict;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{nn, Kind, Tensor};

/// `[model.text]`: where a CLIP classifier's text comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TextConfig {
    /// Prompt templates, `{}` standing for the class name; several are averaged.
    pub templates: Vec<String>,
    /// Class names, one per line in label order (`name`), or as ImageNet-LT's and Places-LT's
    /// `classnames.txt` (`folder name`, matched to the data's class folders), or iNaturalist's
    /// `categories.json` (a list of objects with a `name`, by label). Unset: the data's class
    /// folder names (`_` as spaces, a leading `N_` index left out).
    pub class_names: Option<PathBuf>,
    /// Attention heads of the text transformer: 0 is OpenCLIP's rule, width / 64.
    pub heads: i64,
}

impl Default for TextConfig {
    fn default() -> Self {
        // LIFT's template.
        TextConfig { templates: vec!["a photo of a {}.".to_string()], class_names: None, heads: 0 }
    }
}

pub struct TextTower {
    spec: VitSpec,
    token_embedding: Tensor,
    positional_embedding: Tensor,
    blocks: Vec<Block>,
    ln_final: Affine,
    text_projection: Tensor,
    _vs: nn::VarStore,
}

impl TextTower {
    /// The text tower of the CLIP state dict at `path`; `quick_gelu` as the image tower's
    /// (OpenAI's weights), `heads` 0 for width / 64.
    pub fn load(path: &Path, heads: i64, quick_gelu: bool) -> Result<TextTower> {
        let file = read_state_dict(path)?;
        let Some(tokens) = file.get("token_embedding.weight") else {
            bail!(
                "{}: holds no CLIP text tower (no token_embedding.weight); a classifier started from text needs a whole CLIP state dict \
                 (OpenAI's or OpenCLIP's, text tower included), or give the class embeddings with --class-embeddings FILE",
                path.display()
            );
        };
        let (vocab, width) = (tokens.size()[0], tokens.size()[1]);
        if vocab as usize != Tokenizer::clip().vocab_size() {
            bail!("{}: a text tower of {vocab} tokens; gcl's tokenizer is CLIP's, of {}", path.display(), Tokenizer::clip().vocab_size());
        }
        let dims = |name: &str| file.get(name).map(Tensor::size).with_context(|| format!("{}: the text tower has no {name}", path.display()));
        let context = dims("positional_embedding")?[0];
        let mlp = dims("transformer.resblocks.0.mlp.c_fc.weight")?[0];
        let embed = dims("text_projection")?[1];
        let depth = (0..).take_while(|i| file.contains_key(&format!("transformer.resblocks.{i}.ln_1.weight"))).count();
        let heads = if heads > 0 { heads } else { width / 64 };
        if heads < 1 || width % heads != 0 {
            bail!("model.text.heads = {heads}: the text tower's width {width} needs a number of heads that divides it");
        }
        let spec = VitSpec { patch: 1, width, depth, heads, mlp, image_size: 1, layout: Layout::Clip, embed, quick_gelu };
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let root = vs.root();
        let names = Layout::Clip.names();
        let tower = TextTower {
            spec,
            token_embedding: at(&root, "token_embedding").var("weight", &[vocab, width], nn::Init::Const(0.0)),
            positional_embedding: root.var("positional_embedding", &[context, width], nn::Init::Const(0.0)),
            blocks: (0..depth).map(|i| Block::new(&at(&root, &format!("transformer.resblocks.{i}")), &spec, &names, None)).collect(),
            ln_final: Affine::layer_norm(&at(&root, "ln_final"), width),
            text_projection: root.var("text_projection", &[width, embed], nn::Init::Const(0.0)),
            _vs: vs,
        };
        copy_named(&tower._vs, &file, path)?;
        Ok(tower)
    }

    /// Embeddings (N x embed, not normalised) of N rows of token ids (N x context).
    pub fn encode(&self, ids: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| {
            let (n, len) = ids.size2()?;
            let x = Tensor::embedding(&self.token_embedding, ids, -1, false, false) + self.positional_embedding.narrow(0, 0, len);
            let x = self.blocks.iter().try_fold(x, |x, b| b.forward(&x, &self.spec, 1e-5, true))?;
            let x = self.ln_final.norm(&x, 1e-5);
            let eot = ids.argmax(-1, false);
            Ok(x.index(&[Some(Tensor::arange(n, (Kind::Int64, tch::Device::Cpu))), Some(eot)]).matmul(&self.text_projection))
        })
    }

    /// Each class's unit embedding (classes x embed) from its prompts.
    pub fn class_embeddings(&self, names: &[String], templates: &[String]) -> Result<Tensor> {
        if templates.is_empty() || templates.iter().any(|t| !t.contains("{}")) {
            bail!("model.text.templates = {templates:?}: give at least one template, each with {{}} where the class name goes");
        }
        let context = (self.positional_embedding.size()[0] as usize).min(CONTEXT);
        let prompts: Vec<String> = names.iter().flat_map(|n| templates.iter().map(move |t| t.replace("{}", n))).collect();
        let mut out = Vec::new();
        for chunk in prompts.chunks(256) {
            let ids = Tokenizer::clip().tokenize(chunk, context);
            out.push(super::head::l2_normalize(&self.encode(&ids)?, 1));
        }
        let all = Tensor::cat(&out, 0).view([names.len() as i64, templates.len() as i64, -1]);
        Ok(super::head::l2_normalize(&all.mean_dim(1, false, Kind::Float), 1))
    }
}

/// Copies the file's tensors into `vs`'s variables of the same names: missing and mis-shaped
/// ones in one error.
fn copy_named(vs: &nn::VarStore, file: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut wrong = Vec::new();
    for (name, v) in &vars {
        match file.get(name) {
            None => wrong.push(format!("{name} {:?}: missing from the file", v.size())),
            Some(t) if t.size() != v.size() => wrong.push(format!("{name}: {:?} in the file, {:?} in the tower", t.size(), v.size())),
            Some(_) => {}
        }
    }
    if !wrong.is_empty() {
        bail!("{}: its text tower does not fit CLIP's:\n  {}", path.display(), wrong.join("\n  "));
    }
    tch::no_grad(|| {
        for (name, v) in &vars {
            let mut v = v.shallow_clone();
            v.f_copy_(&file[name].to_kind(Kind::Float))?;
        }
        Ok::<_, tch::TchError>(())
    })?;
    Ok(())
}

/// Class names for prompts: from `file` (see [`TextConfig::class_names`]) or the data's
/// folder names, `classes` of them.
pub fn class_names(file: Option<&Path>, data_names: &[String]) -> Result<Vec<String>> {
    let classes = data_names.len();
    let Some(path) = file else {
        return Ok(data_names.iter().map(|n| readable(n)).collect());
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read class names {}", path.display()))?;
    let names: Vec<String> = if path.extension().is_some_and(|e| e == "json") {
        let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
        let list = v.as_array().with_context(|| format!("{}: expected a list of categories (iNaturalist's categories.json)", path.display()))?;
        list.iter()
            .enumerate()
            .map(|(i, c)| c.get("name").and_then(|n| n.as_str()).map(str::to_string).with_context(|| format!("{}: category {i} has no \"name\"", path.display())))
            .collect::<Result<_>>()?
    } else {
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        // `folder name` lines: matched to the data's folders by the first word.
        let by_folder: Option<BTreeMap<&str, &str>> = lines.iter().map(|l| l.split_once(' ').map(|(f, n)| (f, n.trim()))).collect();
        match by_folder {
            Some(map) if data_names.iter().all(|d| map.contains_key(d.as_str())) => data_names.iter().map(|d| map[d.as_str()].to_string()).collect(),
            _ => lines.iter().map(|l| l.to_string()).collect(),
        }
    };
    if names.len() < classes {
        bail!("{}: {} class names for {classes} classes", path.display(), names.len());
    }
    Ok(names.into_iter().take(classes).collect())
}

/// A folder name as words: `3_Dress` -> `Dress`, `airplane_cabin` -> `airplane cabin`.
fn readable(folder: &str) -> String {
    let name = match folder.split_once('_') {
        Some((i, rest)) if !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()) && !rest.is_empty() => rest,
        _ => folder,
    };
    name.replace('_', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_read_as_words() {
        assert_eq!(readable("3_Dress"), "Dress");
        assert_eq!(readable("airplane_cabin"), "airplane cabin");
        assert_eq!(readable("7"), "7");
    }
}
