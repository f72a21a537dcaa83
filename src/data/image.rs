//! Image files: JPEG (baseline and progressive; greyscale, YCbCr, CMYK and YCCK) decoded by
//! zune-jpeg, PNG (any bit depth and colour type) by the png crate, both into interleaved
//! 8-bit pixels (H x W x C) in the colour mode the dataset asks for, converted as PIL's
//! `Image.convert` does, so pixels match torchvision's `ImageFolder` loader.
//!
//! zune-jpeg was chosen by measurement (docs/performance.md): on one core of this machine's
//! Xeon it decodes 500x375 photos at ~0.8 of libjpeg-turbo 2.1's rate (through the turbojpeg
//! crate), without a system library and with CMYK handled.
use super::augment::Geometry;
use super::Sample;
use anyhow::{bail, Context, Result};
use std::borrow::Cow;

/// The colour mode images are converted to (PIL's mode names: RGB, L).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
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

/// Width and height from the file's header, without decoding the pixels.
pub fn dimensions(bytes: &[u8]) -> Result<(usize, usize)> {
    match sniff(bytes) {
        Some(Format::Jpeg) => {
            let mut d = zune_jpeg::JpegDecoder::new(zune_core::bytestream::ZCursor::new(bytes));
            d.decode_headers()
                .map_err(|e| anyhow::anyhow!("not a readable JPEG: {e:?}"))?;
            let (w, h) = d.dimensions().context("JPEG without dimensions")?;
            Ok((w as usize, h as usize))
        }
        Some(Format::Png) => {
            let info = png::Decoder::new(std::io::Cursor::new(bytes))
                .read_info()
                .map_err(|e| anyhow::anyhow!("not a readable PNG: {e}"))?;
            let (w, h) = info.info().size();
            Ok((w as usize, h as usize))
        }
        None => bail!(
            "neither JPEG nor PNG (the file starts with {:02x?})",
            &bytes[..bytes.len().min(4)]
        ),
    }
}

/// Decodes a JPEG or PNG file's bytes into `color`.
pub fn decode(bytes: &[u8], color: Color) -> Result<Sample<'static>> {
    let (pixels, w, h, c) = match sniff(bytes) {
        Some(Format::Jpeg) => decode_jpeg(bytes)?,
        Some(Format::Png) => decode_png(bytes)?,
        None => bail!(
            "neither JPEG nor PNG (the file starts with {:02x?})",
            &bytes[..bytes.len().min(4)]
        ),
    };
    let pixels = match (c, color) {
        (3, Color::Rgb) | (1, Color::Grey) => pixels,
        (1, Color::Rgb) => pixels.iter().flat_map(|&v| [v, v, v]).collect(),
        (3, Color::Grey) => pixels.chunks_exact(3).map(luma).collect(),
        _ => unreachable!("decoders give 1 or 3 channels"),
    };
    Ok(Sample {
        pixels: Cow::Owned(pixels),
        geometry: Geometry {
            c: color.channels(),
            h,
            w,
        },
    })
}

/// PIL's RGB -> L conversion (libImaging/Convert.c, L24).
pub fn luma(rgb: &[u8]) -> u8 {
    ((rgb[0] as u32 * 19595 + rgb[1] as u32 * 38470 + rgb[2] as u32 * 7471 + 0x8000) >> 16) as u8
}

/// Pixels, width, height, channels (1 or 3).
fn decode_jpeg(bytes: &[u8]) -> Result<(Vec<u8>, usize, usize, usize)> {
    use zune_core::colorspace::ColorSpace;
    use zune_core::options::DecoderOptions;
    // A JPEG cut short decodes "successfully" into grey blocks in tolerant decoders; a file
    // without its end-of-image marker is refused, as PIL refuses it.
    let tail = &bytes[bytes.len().saturating_sub(64)..];
    if !tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
        bail!("truncated JPEG (no end-of-image marker)");
    }
    let mut d = zune_jpeg::JpegDecoder::new(zune_core::bytestream::ZCursor::new(bytes));
    d.decode_headers()
        .map_err(|e| anyhow::anyhow!("not a readable JPEG: {e:?}"))?;
    let out = if d.input_colorspace() == Some(ColorSpace::Luma) {
        ColorSpace::Luma
    } else {
        ColorSpace::RGB
    };
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(out)
        .set_max_width(1 << 15)
        .set_max_height(1 << 15);
    let mut d = zune_jpeg::JpegDecoder::new_with_options(
        zune_core::bytestream::ZCursor::new(bytes),
        options,
    );
    let pixels = d
        .decode()
        .map_err(|e| anyhow::anyhow!("undecodable JPEG: {e:?}"))?;
    let (w, h) = d.dimensions().context("JPEG without dimensions")?;
    let c = out.num_components();
    if pixels.len() != w as usize * h as usize * c {
        bail!("JPEG decoded to {} bytes, not {w}x{h}x{c}", pixels.len());
    }
    Ok((pixels, w as usize, h as usize, c))
}

fn decode_png(bytes: &[u8]) -> Result<(Vec<u8>, usize, usize, usize)> {
    let mut d = png::Decoder::new(std::io::Cursor::new(bytes));
    // Palettes and low bit depths expanded, 16-bit samples cut to their high byte.
    d.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut r = d
        .read_info()
        .map_err(|e| anyhow::anyhow!("not a readable PNG: {e}"))?;
    let mut buf = vec![0; r.output_buffer_size().context("PNG too large")?];
    let info = r
        .next_frame(&mut buf)
        .map_err(|e| anyhow::anyhow!("undecodable PNG: {e}"))?;
    buf.truncate(info.buffer_size());
    let (w, h) = (info.width as usize, info.height as usize);
    // Alpha is dropped, as PIL's convert("RGB") / convert("L") drop it.
    let (pixels, c) = match info.color_type {
        png::ColorType::Grayscale => (buf, 1),
        png::ColorType::Rgb => (buf, 3),
        png::ColorType::GrayscaleAlpha => (buf.chunks_exact(2).map(|p| p[0]).collect(), 1),
        png::ColorType::Rgba => (
            buf.chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect(),
            3,
        ),
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
        e.set_color(if g.c == 1 {
            png::ColorType::Grayscale
        } else {
            png::ColorType::Rgb
        });
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
    let ct = if g.c == 1 {
        jpeg_encoder::ColorType::Luma
    } else {
        jpeg_encoder::ColorType::Rgb
    };
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
            let f = |v: u8| {
                if k == 0 {
                    0
                } else {
                    (v as u32 * 255 / k as u32) as u8
                }
            };
            [f(p[0]), f(p[1]), f(p[2]), k]
        })
        .collect();
    let mut out = Vec::new();
    let e = jpeg_encoder::Encoder::new(&mut out, quality);
    e.encode(&cmyk, g.w as u16, g.h as u16, jpeg_encoder::ColorType::Cmyk)?;
    Ok(out)
}
