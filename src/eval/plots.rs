//! Figures drawn with `plotters` (`gcl report`'s, `gcl sweep`'s): each one as SVG (embedded
//! in a page) and PNG, from one drawing routine.
use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// A drawing error as an error of ours.
pub fn e<E: std::fmt::Debug>(x: E) -> anyhow::Error {
    anyhow!("drawing a figure: {x:?}")
}

/// Registers the font the PNGs are drawn with (SVGs name a family, the browser draws it).
pub fn register_font() -> Result<()> {
    const DEJAVU: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
    let bytes = std::fs::read(DEJAVU).with_context(|| format!("cannot read the font {DEJAVU} for the PNG figures (Debian's fonts-dejavu-core; scripts/setup.sh installs it)"))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice())).map_err(|_| anyhow!("{DEJAVU} is not a font plotters can read"))
}

/// A figure's SVG text, after it was also written as DIR/NAME.svg and DIR/NAME.png.
pub struct Figure {
    pub name: String,
    pub svg: String,
}

/// One figure's drawing routine, for any backend.
pub trait Draw {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>;
}

/// Draws `d` as `dir/name.svg` and `dir/name.png` (each through a temporary file and a rename).
pub fn render(dir: &Path, name: &str, size: (u32, u32), d: &impl Draw) -> Result<Figure> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        d.draw(&root)?;
        root.present().map_err(e)?;
    }
    crate::util::write_atomic(&dir.join(format!("{name}.svg")), svg.as_bytes())?;
    let mut rgb = vec![0u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        d.draw(&root)?;
        root.present().map_err(e)?;
    }
    let geometry = crate::data::augment::Geometry { c: 3, h: size.1 as usize, w: size.0 as usize };
    let png = crate::data::image::encode_png(&crate::data::Sample { pixels: rgb.into(), geometry })?;
    crate::util::write_atomic(&dir.join(format!("{name}.png")), &png)?;
    Ok(Figure { name: name.to_string(), svg })
}

/// Colour `i` of `n` for classes: tab10's for up to 10, an even walk round the hue circle
/// beyond.
pub fn class_color(i: usize, n: usize) -> RGBColor {
    const TAB10: [(u8, u8, u8); 10] =
        [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)];
    if n <= 10 {
        let (r, g, b) = TAB10[i % 10];
        return RGBColor(r, g, b);
    }
    let c = HSLColor(i as f64 / n as f64, 0.65, 0.45);
    let rgb = c.to_rgba();
    RGBColor(rgb.0, rgb.1, rgb.2)
}

/// Colour of series `i` (a run's stage) in the comparison figures.
pub fn series_color(i: usize) -> RGBColor {
    class_color(i, 10)
}

