//! Image files: JPEG (baseline and progressive; greyscale, YCbCr, CMYK and YCCK) decoded by
//! libjpeg-turbo (the turbojpeg crate), PNG (any bit depth and colour type) by the png crate,
//! both into interleaved 8-bit pixels (H x W x C) in the colour mode the dataset asks for,
//! converted as PIL's `Image.convert` does, so pixels match torchvision's `ImageFolder`
//! loader (Pillow decodes JPEG with libjpeg-turbo too, with the same default IDCT and
//! upsampling: the same pixels).
//!
//! libjpeg-turbo was chosen by measurement (docs/performance.md): on one core of this
//! machine's Xeon it decoded 500x375 photos 1.2x as fast as zune-jpeg, the fastest Rust
//! decoder, whose pixels also differ from Pillow's by up to 4 levels.
use super::augment::Geometry;
use super::Sample;
use anyhow::{bail, Context, Result};
use std::borrow::Cow;

/// The colour mode images are converted to (PIL's mode names: RGB, L).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Color {
    /// Three channels; greyscale images are repeated into them (torchvision's default).
    Rgb,
    /// One channel: ITU-R 601-2 luma, L = (19595 R + 38470 G + 7471 B + 2^15) >> 16 as PIL.
    Grey,
}

impl Color {
    pub fn channels(self) -> usize {
        match self {
            Color::Rgb => 3,
            Color::Grey => 1,
        }
    }
}

/// The file formats gcl reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
}

/// The format of an image file from its first bytes (not its name).
pub fn sniff(bytes: &[u8]) -> Option<Format> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(Format::Jpeg)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(Format::Png)
    } else {
        None
    }
}

/// The error for a file that is neither JPEG nor PNG.
fn unknown_format(bytes: &[u8]) -> anyhow::Error {
    anyhow::anyhow!("neither JPEG nor PNG (the file starts with {:02x?})", &bytes[..bytes.len().min(4)])
}

/// Width and height from the file's header, without decoding the pixels.
pub fn dimensions(bytes: &[u8]) -> Result<(usize, usize)> {
    match sniff(bytes) {
        Some(Format::Jpeg) => {
            let h = turbojpeg::read_header(bytes).map_err(|e| anyhow::anyhow!("not a readable JPEG: {e}"))?;
            Ok((h.width, h.height))
        }
        Some(Format::Png) => {
            let info = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().map_err(|e| anyhow::anyhow!("not a readable PNG: {e}"))?;
            let (w, h) = info.info().size();
            Ok((w as usize, h as usize))
        }
        None => Err(unknown_format(bytes)),
    }
}

/// Images of more pixels than this are refused before their pixels are allocated: Pillow's
/// `Image.MAX_IMAGE_PIXELS` (1024^3 / 4 / 3), the default of `data.max_pixels`. A file a few
/// hundred bytes long can claim 65000 x 65000 pixels (12 GB to decode): a decompression bomb.
pub const MAX_PIXELS: u64 = 89_478_485;

/// The error for an image of `w` x `h` pixels when `max_pixels` are allowed, or None.
fn too_large(w: usize, h: usize, max_pixels: u64) -> Option<anyhow::Error> {
    let n = w as u64 * h as u64;
    (n > max_pixels).then(|| {
        anyhow::anyhow!(
            "{w} x {h} pixels ({n}) is more than data.max_pixels = {max_pixels} allows (a decompression bomb? \
             a genuine image this large is read with a larger data.max_pixels)"
        )
    })
}

/// Decodes a JPEG or PNG file's bytes into `color`, refusing images of more than
/// [`MAX_PIXELS`] pixels.
pub fn decode(bytes: &[u8], color: Color) -> Result<Sample<'static>> {
    decode_within(bytes, color, MAX_PIXELS)
}

/// As [`decode`], with the pixel limit `max_pixels` (`data.max_pixels`): the header's size is
/// checked before any pixel memory is allocated.
pub fn decode_within(bytes: &[u8], color: Color, max_pixels: u64) -> Result<Sample<'static>> {
    let (pixels, w, h, c) = match sniff(bytes) {
        Some(Format::Jpeg) => decode_jpeg(bytes, color, max_pixels)?,
        Some(Format::Png) => decode_png(bytes, max_pixels)?,
        None => return Err(unknown_format(bytes)),
    };
    let pixels = match (c, color) {
        (3, Color::Rgb) | (1, Color::Grey) => pixels,
        (1, Color::Rgb) => pixels.iter().flat_map(|&v| [v, v, v]).collect(),
        (3, Color::Grey) => pixels.chunks_exact(3).map(luma).collect(),
        _ => unreachable!("decoders give 1 or 3 channels"),
    };
    Ok(Sample { pixels: Cow::Owned(pixels), geometry: Geometry { c: color.channels(), h, w } })
}

/// PIL's RGB -> L conversion (libImaging/Convert.c, L24).
pub fn luma(rgb: &[u8]) -> u8 {
    ((rgb[0] as u32 * 19595 + rgb[1] as u32 * 38470 + rgb[2] as u32 * 7471 + 0x8000) >> 16) as u8
}

thread_local! {
    // A decompressor per thread, reused from image to image.
    static TURBO: std::cell::RefCell<Option<turbojpeg::Decompressor>> = const { std::cell::RefCell::new(None) };
}

/// Pixels, width, height, channels (1 or 3).
fn decode_jpeg(bytes: &[u8], color: Color, max_pixels: u64) -> Result<(Vec<u8>, usize, usize, usize)> {
    use turbojpeg::{Colorspace, PixelFormat};
    // A JPEG cut short decodes into grey blocks with only a warning; a file without its
    // end-of-image marker is refused, as PIL refuses it.
    let tail = &bytes[bytes.len().saturating_sub(64)..];
    if !tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
        bail!("truncated JPEG (no end-of-image marker)");
    }
    TURBO.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(turbojpeg::Decompressor::new().map_err(|e| anyhow::anyhow!("cannot start libjpeg-turbo: {e}"))?);
        }
        let d = slot.as_mut().expect("made above");
        let h = d.read_header(bytes).map_err(|e| anyhow::anyhow!("not a readable JPEG: {e}"))?;
        if let Some(e) = too_large(h.width, h.height, max_pixels) {
            return Err(e);
        }
        if h.width > 1 << 15 || h.height > 1 << 15 {
            bail!("JPEG of {}x{} pixels is larger than gcl reads (32768 a side)", h.width, h.height);
        }
        // Greyscale files as RGB: libjpeg-turbo repeats the channel, as PIL's convert does.
        let (format, c) = match h.colorspace {
            Colorspace::Gray if color == Color::Grey => (PixelFormat::GRAY, 1),
            Colorspace::CMYK | Colorspace::YCCK => (PixelFormat::CMYK, 4),
            _ => (PixelFormat::RGB, 3),
        };
        let mut pixels = vec![0u8; h.width * h.height * c];
        let image = turbojpeg::Image { pixels: &mut pixels[..], width: h.width, pitch: h.width * c, height: h.height, format };
        // Warnings (a corrupt stream that still decodes to something) are errors here, as
        // PIL raises on them.
        d.decompress(bytes, image).map_err(|e| anyhow::anyhow!("undecodable JPEG: {e}"))?;
        if c == 4 {
            return Ok((cmyk_to_rgb(&pixels), h.width, h.height, 3));
        }
        Ok((pixels, h.width, h.height, c))
    })
}

/// PIL's CMYK -> RGB (libImaging/Convert.c, cmyk2rgb) for Adobe's inverted CMYK, which
/// libjpeg-turbo hands over as stored and PIL reads as "CMYK;I": with stored values c', k',
/// R = k' - round(k' * (255 - c') / 255).
fn cmyk_to_rgb(px: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; px.len() / 4 * 3];
    for (o, p) in out.chunks_exact_mut(3).zip(px.chunks_exact(4)) {
        let nk = p[3] as u32;
        for (d, &v) in o.iter_mut().zip(&p[..3]) {
            let t = (255 - v as u32) * nk + 128;
            // nk >= MULDIV255(.., nk), so no clamp is needed.
            *d = (nk - (((t >> 8) + t) >> 8)) as u8;
        }
    }
    out
}

fn decode_png(bytes: &[u8], max_pixels: u64) -> Result<(Vec<u8>, usize, usize, usize)> {
    let mut d = png::Decoder::new(std::io::Cursor::new(bytes));
    // Palettes and low bit depths expanded, 16-bit samples cut to their high byte.
    d.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut r = d.read_info().map_err(|e| anyhow::anyhow!("not a readable PNG: {e}"))?;
    let (w, h) = r.info().size();
    if let Some(e) = too_large(w as usize, h as usize, max_pixels) {
        return Err(e);
    }
    let mut buf = vec![0; r.output_buffer_size().context("PNG too large")?];
    let info = r.next_frame(&mut buf).map_err(|e| anyhow::anyhow!("undecodable PNG: {e}"))?;
    buf.truncate(info.buffer_size());
    let (w, h) = (info.width as usize, info.height as usize);
    // Alpha is dropped, as PIL's convert("RGB") / convert("L") drop it.
    let (pixels, c) = match info.color_type {
        png::ColorType::Grayscale => (buf, 1),
        png::ColorType::Rgb => (buf, 3),
        png::ColorType::GrayscaleAlpha => (buf.chunks_exact(2).map(|p| p[0]).collect(), 1),
        png::ColorType::Rgba => (buf.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(), 3),
        png::ColorType::Indexed => bail!("PNG palette was not expanded"),
    };
    Ok((pixels, w, h, c))
}

/// PNG bytes of an 8-bit greyscale (c = 1) or RGB (c = 3) image.
pub fn encode_png(s: &Sample) -> Result<Vec<u8>> {
    let g = s.geometry;
    let mut out = Vec::new();
    {
        let mut e = png::Encoder::new(&mut out, g.w as u32, g.h as u32);
        e.set_color(if g.c == 1 { png::ColorType::Grayscale } else { png::ColorType::Rgb });
        e.set_depth(png::BitDepth::Eight);
        let mut w = e.write_header()?;
        w.write_image_data(&s.pixels)?;
    }
    Ok(out)
}

/// JPEG bytes of an 8-bit greyscale or RGB image (`progressive`: a multi-scan file).
pub fn encode_jpeg(s: &Sample, quality: u8, progressive: bool) -> Result<Vec<u8>> {
    let g = s.geometry;
    let mut out = Vec::new();
    let mut e = jpeg_encoder::Encoder::new(&mut out, quality);
    e.set_progressive(progressive);
    let ct = if g.c == 1 { jpeg_encoder::ColorType::Luma } else { jpeg_encoder::ColorType::Rgb };
    e.encode(&s.pixels, g.w as u16, g.h as u16, ct)?;
    Ok(out)
}

/// CMYK JPEG bytes (Adobe's inverted convention, as Photoshop and PIL write them) of an RGB
/// image, for tests of the CMYK path.
pub fn encode_jpeg_cmyk(s: &Sample, quality: u8) -> Result<Vec<u8>> {
    let g = s.geometry;
    anyhow::ensure!(g.c == 3, "CMYK is made from RGB");
    let cmyk: Vec<u8> = s
        .pixels
        .chunks_exact(3)
        .flat_map(|p| {
            // Stored inverted: k' = 255 - K = max(R, G, B), c' = 255 - C = R * 255 / k'.
            let k = p[0].max(p[1]).max(p[2]);
            let f = |v: u8| if k == 0 { 0 } else { (v as u32 * 255 / k as u32) as u8 };
            [f(p[0]), f(p[1]), f(p[2]), k]
        })
        .collect();
    let mut out = Vec::new();
    let e = jpeg_encoder::Encoder::new(&mut out, quality);
    e.encode(&cmyk, g.w as u16, g.h as u16, jpeg_encoder::ColorType::Cmyk)?;
    Ok(out)
}
