//! The adaptation report: a PNG figure a clinician can read, and a Markdown page around it.
//!
//! For each selected volume the figure shows an axial, a coronal and a sagittal mid-slice of the
//! image (grey, windowed to its 1st-99th percentile) with the model's predictive entropy
//! alpha-blended on top (colour bar at the right of each row), captioned with the volume's id,
//! pick order and score components; below them a Dice before/after bar chart. `report.md` has the
//! full selection table, the Dice table and the reliable set.
//!
//! Display convention: **radiological** (as 3D Slicer and most PACS viewers show it): volumes are
//! reoriented to RAS first, axial and coronal slices show the patient's right on the viewer's left,
//! axial slices anterior at the top, coronal and sagittal slices superior at the top, sagittal
//! slices anterior on the left. Every panel carries its orientation letters at the edges.
//!
//! It is part of the command line (the `report` and `demo` commands), not of the library: the
//! shared library stays free of image encoding and fonts. Text is drawn with the public-domain 8x8 bitmap font of
//! `font8x8` at 2x (16 px per character): no font files, no rasteriser, the same pixels on every
//! platform.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use asfda::atomic_file;
use asfda::select::{Pick, Selection};
use asfda::stats::quantile_nearest_rank;
use asfda::volume::Volume;
use asfda::{Error, Result};

/// One selected volume as the report shows it.
pub struct ReportVolume<'a> {
    /// The id the selection knows the volume by.
    pub id: &'a str,
    /// The image (channel 0 is shown).
    pub image: &'a Volume,
    /// Normalised predictive entropy in [0, 1] on the image's grid (one channel), e.g.
    /// [`asfda::engine::Segmentation::entropy`].
    pub entropy: &'a Volume,
}

/// Dice of one row (a class, or a held-out volume) before and after adaptation.
#[derive(Clone, Debug, PartialEq)]
pub struct DiceRow {
    pub name: String,
    /// In [0, 1]; NaN means "not defined" (e.g. the class is absent in prediction and truth).
    pub before: f64,
    pub after: f64,
}

/// The Dice table: what a row is (e.g. "class") and the rows.
#[derive(Clone, Debug, PartialEq)]
pub struct DiceTable {
    /// What the rows are, e.g. "class" or "volume"; the chart's axis caption.
    pub row_kind: String,
    /// What the numbers are, e.g. "mean Dice over 8 held-out pd volumes".
    pub description: String,
    pub rows: Vec<DiceRow>,
}

/// Everything the report shows.
pub struct Report<'a> {
    /// The figure's and page's title.
    pub title: String,
    /// The selection the volumes come from.
    pub selection: &'a Selection,
    /// Selected volumes to show (each id must be among the selection's picks); shown in pick order.
    pub volumes: Vec<ReportVolume<'a>>,
    /// The Dice before/after table, if fine-tuning ran.
    pub dice: Option<DiceTable>,
    /// Extra lines for the page (data provenance, model, timings).
    pub notes: Vec<String>,
}

/// Paths written by [`write_report`].
#[derive(Clone, Debug)]
pub struct ReportFiles {
    pub png: PathBuf,
    pub markdown: PathBuf,
}

/// Writes `dir/report.png` and `dir/report.md` (each atomically; `dir` is created).
pub fn write_report(report: &Report<'_>, dir: &Path) -> Result<ReportFiles> {
    let figure = render_figure(report)?;
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create folder", &e))?;
    let png = dir.join("report.png");
    let markdown = dir.join("report.md");
    atomic_file::write(&png, &figure.to_png()?)?;
    atomic_file::write(&markdown, render_markdown(report, "report.png").as_bytes())?;
    Ok(ReportFiles { png, markdown })
}

/// An RGB raster, row-major, 3 bytes per pixel.
#[derive(Clone, Debug, PartialEq)]
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

pub type Rgb = [u8; 3];

const WHITE: Rgb = [255, 255, 255];
const INK: Rgb = [20, 20, 30];
const MUTED: Rgb = [90, 90, 100];
const PANEL_BG: Rgb = [0, 0, 0];
const GRID: Rgb = [215, 215, 220];
const BEFORE: Rgb = [150, 150, 160];
const AFTER: Rgb = [30, 110, 200];
const ORIENTATION_INK: Rgb = [255, 220, 60];

/// The font's glyphs are 8x8; drawn at this scale.
pub const TEXT_SCALE: usize = 2;
/// Height of one text line at [`TEXT_SCALE`], with spacing.
const LINE: usize = 8 * TEXT_SCALE + 4;

impl Canvas {
    pub fn new(width: usize, height: usize, background: Rgb) -> Canvas {
        let rgb = background.iter().copied().cycle().take(width * height * 3).collect();
        Canvas { width, height, rgb }
    }

    /// The colour at (x, y) (the tests read the figure back).
    #[cfg(test)]
    pub fn pixel(&self, x: usize, y: usize) -> Rgb {
        let i = (y * self.width + x) * 3;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }

    /// Sets a pixel; outside the canvas does nothing (drawing is clipped).
    pub fn set(&mut self, x: usize, y: usize, color: Rgb) {
        if x < self.width && y < self.height {
            let i = (y * self.width + x) * 3;
            self.rgb[i..i + 3].copy_from_slice(&color);
        }
    }

    pub fn fill_rect(&mut self, x: usize, y: usize, w: usize, h: usize, color: Rgb) {
        for yy in y..(y + h).min(self.height) {
            for xx in x..(x + w).min(self.width) {
                self.set(xx, yy, color);
            }
        }
    }

    /// A 1-pixel rectangle outline.
    pub fn stroke_rect(&mut self, x: usize, y: usize, w: usize, h: usize, color: Rgb) {
        if w == 0 || h == 0 {
            return;
        }
        self.fill_rect(x, y, w, 1, color);
        self.fill_rect(x, y + h - 1, w, 1, color);
        self.fill_rect(x, y, 1, h, color);
        self.fill_rect(x + w - 1, y, 1, h, color);
    }

    /// Draws `text` with its top-left corner at (x, y), `scale` pixels per font pixel; characters
    /// outside ASCII are drawn as '?'. Returns the width drawn.
    pub fn text(&mut self, x: usize, y: usize, text: &str, scale: usize, color: Rgb) -> usize {
        let mut pen = x;
        for ch in text.chars() {
            let code = if ch.is_ascii() { ch as usize } else { '?' as usize };
            let glyph = font8x8::legacy::BASIC_LEGACY[code];
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    // Bit 0 is the leftmost pixel of the row.
                    if bits >> col & 1 == 1 {
                        self.fill_rect(pen + col * scale, y + row * scale, scale, scale, color);
                    }
                }
            }
            pen += 8 * scale;
        }
        pen - x
    }

    /// Encodes the canvas as an 8-bit RGB PNG.
    pub fn to_png(&self) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        let mut encoder = png::Encoder::new(&mut bytes, self.width as u32, self.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let encoded = encoder.write_header().and_then(|mut w| {
            w.write_image_data(&self.rgb)?;
            w.finish()
        });
        encoded.map_err(|e| Error::internal(format!("PNG encoding failed: {e}")))?;
        Ok(bytes)
    }
}

/// Width in pixels of `text` drawn at `scale`.
pub fn text_width(text: &str, scale: usize) -> usize {
    text.chars().count() * 8 * scale
}

/// The entropy colour map (a perceptually ordered dark-purple -> orange -> light-yellow ramp,
/// control points of matplotlib's "inferno"), `t` clamped to [0, 1].
pub fn colormap(t: f64) -> Rgb {
    const STOPS: [Rgb; 9] = [
        [0, 0, 4],
        [31, 12, 72],
        [85, 15, 109],
        [136, 34, 106],
        [186, 54, 85],
        [227, 89, 51],
        [249, 140, 10],
        [249, 201, 50],
        [252, 255, 164],
    ];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let x = t * (STOPS.len() - 1) as f64;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    [mix(STOPS[i][0], STOPS[i + 1][0]), mix(STOPS[i][1], STOPS[i + 1][1]), mix(STOPS[i][2], STOPS[i + 1][2])]
}

/// Opacity of the entropy overlay at normalised entropy `e`: transparent below
/// [`OVERLAY_FLOOR`] (confident voxels leave the anatomy visible), rising linearly to
/// [`OVERLAY_MAX_ALPHA`] at e = 1.
pub fn overlay_alpha(e: f64) -> f64 {
    if !(e.is_finite() && e > OVERLAY_FLOOR) {
        return 0.0;
    }
    OVERLAY_MAX_ALPHA * ((e - OVERLAY_FLOOR) / (1.0 - OVERLAY_FLOOR)).min(1.0).sqrt()
}

/// Entropy below this is not overlaid.
pub const OVERLAY_FLOOR: f64 = 0.05;
/// Opacity of the overlay at entropy 1.
pub const OVERLAY_MAX_ALPHA: f64 = 0.85;

fn blend(under: Rgb, over: Rgb, alpha: f64) -> Rgb {
    let m = |a: u8, b: u8| (a as f64 * (1.0 - alpha) + b as f64 * alpha).round() as u8;
    [m(under[0], over[0]), m(under[1], over[1]), m(under[2], over[2])]
}

/// Which mid-slice of a RAS volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plane {
    Axial,
    Coronal,
    Sagittal,
}

impl Plane {
    pub const ALL: [Plane; 3] = [Plane::Axial, Plane::Coronal, Plane::Sagittal];

    pub fn name(self) -> &'static str {
        match self {
            Plane::Axial => "axial",
            Plane::Coronal => "coronal",
            Plane::Sagittal => "sagittal",
        }
    }

    /// Orientation letters at the (left, right, top, bottom) edges, radiological convention.
    pub fn edge_letters(self) -> [&'static str; 4] {
        match self {
            Plane::Axial => ["R", "L", "A", "P"],
            Plane::Coronal => ["R", "L", "S", "I"],
            Plane::Sagittal => ["A", "P", "S", "I"],
        }
    }
}

/// A 2D mid-slice of a RAS volume in display orientation: `values[row * cols + col]`, row 0 at
/// the top, and the physical size of a pixel (mm) along columns and rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Slice {
    pub cols: usize,
    pub rows: usize,
    pub values: Vec<f32>,
    pub pixel_mm: [f64; 2],
}

/// The mid-slice of channel 0 of `ras` (a volume in RAS voxel order, see [`Volume::to_canonical`])
/// in the radiological display orientation of the module documentation.
pub fn mid_slice(ras: &Volume, plane: Plane) -> Slice {
    let [nx, ny, nz] = ras.dims();
    let [sx, sy, sz] = ras.spacing();
    let data = ras.channel(0);
    let at = |i: usize, j: usize, k: usize| data[i + nx * (j + ny * k)];
    // (cols, rows, pixel mm, voxel of (col, row)): i grows to the patient's right, j anterior,
    // k superior.
    let (cols, rows, pixel_mm) = match plane {
        Plane::Axial => (nx, ny, [sx, sy]),
        Plane::Coronal => (nx, nz, [sx, sz]),
        Plane::Sagittal => (ny, nz, [sy, sz]),
    };
    let mut values = Vec::with_capacity(cols * rows);
    for r in 0..rows {
        for c in 0..cols {
            values.push(match plane {
                // Right on the left: column 0 is the largest i; anterior at the top.
                Plane::Axial => at(nx - 1 - c, ny - 1 - r, nz / 2),
                Plane::Coronal => at(nx - 1 - c, ny / 2, nz - 1 - r),
                // Anterior on the left: column 0 is the largest j; superior at the top.
                Plane::Sagittal => at(nx / 2, ny - 1 - c, nz - 1 - r),
            });
        }
    }
    Slice { cols, rows, values, pixel_mm }
}

/// Size of one image panel (square, pixels).
const PANEL: usize = 240;
/// Left column with the captions.
const CAPTION_W: usize = 330;
const GAP: usize = 12;
const COLORBAR_W: usize = 120;
const MARGIN: usize = 16;
const ROW_H: usize = LINE + PANEL + GAP * 2;
const CHART_H: usize = 330;

/// Draws the image slice (grey, `window` = (low, high)) with the entropy slice alpha-blended on
/// top, fitted into the `PANEL` square at (x, y) with its physical aspect ratio kept.
fn draw_panel(canvas: &mut Canvas, x: usize, y: usize, image: &Slice, entropy: &Slice, window: (f32, f32)) {
    canvas.fill_rect(x, y, PANEL, PANEL, PANEL_BG);
    let width_mm = image.cols as f64 * image.pixel_mm[0];
    let height_mm = image.rows as f64 * image.pixel_mm[1];
    let scale = (PANEL as f64 / width_mm).min(PANEL as f64 / height_mm);
    let w = ((width_mm * scale).round() as usize).clamp(1, PANEL);
    let h = ((height_mm * scale).round() as usize).clamp(1, PANEL);
    let (x0, y0) = (x + (PANEL - w) / 2, y + (PANEL - h) / 2);
    let (low, high) = window;
    let range = (high - low).max(f32::EPSILON);
    for v in 0..h {
        let r = ((v as f64 + 0.5) / h as f64 * image.rows as f64) as usize;
        for u in 0..w {
            // Nearest neighbour: every displayed value is a voxel's own value.
            let c = ((u as f64 + 0.5) / w as f64 * image.cols as f64) as usize;
            let k = r.min(image.rows - 1) * image.cols + c.min(image.cols - 1);
            let g = (((image.values[k] - low) / range).clamp(0.0, 1.0) * 255.0).round() as u8;
            let e = entropy.values[k] as f64;
            canvas.set(x0 + u, y0 + v, blend([g, g, g], colormap(e), overlay_alpha(e)));
        }
    }
}

fn draw_edge_letters(canvas: &mut Canvas, x: usize, y: usize, plane: Plane) {
    let [left, right, top, bottom] = plane.edge_letters();
    let s = TEXT_SCALE;
    let mid = PANEL / 2 - 4 * s;
    canvas.text(x + 3, y + mid, left, s, ORIENTATION_INK);
    canvas.text(x + PANEL - 3 - 8 * s, y + mid, right, s, ORIENTATION_INK);
    canvas.text(x + mid, y + 3, top, s, ORIENTATION_INK);
    canvas.text(x + mid, y + PANEL - 3 - 8 * s, bottom, s, ORIENTATION_INK);
}

fn draw_colorbar(canvas: &mut Canvas, x: usize, y: usize, h: usize) {
    let bar_w = 18;
    for v in 0..h {
        let t = 1.0 - v as f64 / (h - 1) as f64;
        canvas.fill_rect(x, y + v, bar_w, 1, colormap(t));
    }
    canvas.stroke_rect(x, y, bar_w, h, INK);
    for (label, t) in [("1", 1.0), ("0.5", 0.5), ("0", 0.0)] {
        let ty = y + ((1.0 - t) * (h - 1) as f64) as usize;
        canvas.fill_rect(x + bar_w, ty, 4, 1, INK);
        // Centred on the tick, kept within the bar's height (clear of the caption above it).
        let label_y = ty.saturating_sub(8).clamp(y, y + h - 16);
        canvas.text(x + bar_w + 6, label_y, label, TEXT_SCALE, INK);
    }
}

/// Caption lines for a pick.
fn caption(pick: &Pick) -> Vec<String> {
    vec![
        format!("combined  {:.3}", pick.combined),
        format!("gap {:.3} rank {:.2}", pick.gap, pick.gap_rank),
        format!("diversity {:.3}", pick.diversity),
        format!("DKD rank  {:.2}", pick.dkd_rank),
        format!("ASD {:.3} rank {:.2}", pick.asd, pick.asd_rank),
    ]
}

/// Cuts `text` to at most `max` characters, marking the cut with '~'.
fn fit(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
        s.push('~');
        s
    }
}

/// The picks of `report.volumes`, checked, in pick order.
fn ordered<'r, 'a>(report: &'r Report<'a>) -> Result<Vec<(&'r ReportVolume<'a>, &'r Pick)>> {
    let mut rows = Vec::with_capacity(report.volumes.len());
    for v in &report.volumes {
        let pick = report.selection.picks.iter().find(|p| p.id == v.id).ok_or_else(|| {
            Error::invalid_argument(format!("report volume '{}' is not among the selection's picks", v.id))
        })?;
        v.image.check_same_grid(v.entropy, &format!("entropy of '{}'", v.id))?;
        if v.entropy.channels() != 1 {
            return Err(Error::invalid_argument(format!(
                "entropy of '{}' has {} channels, expected 1",
                v.id,
                v.entropy.channels()
            )));
        }
        if rows.iter().any(|(r, _): &(&ReportVolume, &Pick)| r.id == v.id) {
            return Err(Error::invalid_argument(format!("report volume '{}' is given twice", v.id)));
        }
        rows.push((v, pick));
    }
    rows.sort_by_key(|(_, p)| p.order);
    Ok(rows)
}

/// Renders the figure (see the module documentation for the layout).
pub fn render_figure(report: &Report<'_>) -> Result<Canvas> {
    let rows = ordered(report)?;
    let width = MARGIN * 2 + CAPTION_W + 3 * (PANEL + GAP) + COLORBAR_W;
    let header_h = MARGIN + LINE * 3;
    let chart_h = if report.dice.is_some() { CHART_H + GAP } else { 0 };
    let height = header_h + rows.len() * ROW_H + chart_h + MARGIN;
    let mut canvas = Canvas::new(width, height, WHITE);
    let max_chars = (width - 2 * MARGIN) / (8 * TEXT_SCALE);

    canvas.text(MARGIN, MARGIN, &fit(&report.title, max_chars), TEXT_SCALE, INK);
    let sel = report.selection;
    let subtitle = format!(
        "{} picks by {} (seed {}). Overlay: model entropy, clear below {}",
        sel.picks.len(),
        sel.method,
        sel.options.seed,
        OVERLAY_FLOOR
    );
    canvas.text(MARGIN, MARGIN + LINE, &fit(&subtitle, max_chars), TEXT_SCALE, MUTED);
    canvas.text(
        MARGIN,
        MARGIN + 2 * LINE,
        &fit("Radiological view (patient right = image left), RAS mid-slices", max_chars),
        TEXT_SCALE,
        MUTED,
    );

    for (n, (volume, pick)) in rows.iter().enumerate() {
        let top = header_h + n * ROW_H;
        canvas.fill_rect(MARGIN, top + 2, width - 2 * MARGIN, 1, GRID);
        let ty = top + GAP;
        canvas.text(MARGIN, ty, &format!("#{}", pick.order + 1), TEXT_SCALE, AFTER);
        // The id in full where it fits in two lines of the caption column.
        let per_line = CAPTION_W / (8 * TEXT_SCALE);
        let id: Vec<char> = volume.id.chars().collect();
        let id_lines: Vec<String> = id.chunks(per_line).map(|c| c.iter().collect()).collect();
        let id_lines = if id_lines.len() > 2 {
            vec![id_lines[0].clone(), fit(&id[per_line..].iter().collect::<String>(), per_line)]
        } else {
            id_lines
        };
        for (l, line) in id_lines.iter().enumerate() {
            canvas.text(MARGIN, ty + (l + 1) * LINE, line, TEXT_SCALE, INK);
        }
        for (l, line) in caption(pick).iter().enumerate() {
            canvas.text(MARGIN, ty + (l + 1 + id_lines.len()) * LINE + 8, &fit(line, per_line), TEXT_SCALE, INK);
        }

        let (image, _) = volume.image.to_canonical();
        let (entropy, _) = volume.entropy.to_canonical();
        let window = (quantile_nearest_rank(image.channel(0), 0.01), quantile_nearest_rank(image.channel(0), 0.99));
        for (p, plane) in Plane::ALL.into_iter().enumerate() {
            let x = MARGIN + CAPTION_W + p * (PANEL + GAP);
            canvas.text(x, ty, plane.name(), TEXT_SCALE, MUTED);
            let y = ty + LINE;
            draw_panel(&mut canvas, x, y, &mid_slice(&image, plane), &mid_slice(&entropy, plane), window);
            draw_edge_letters(&mut canvas, x, y, plane);
        }
        let cx = MARGIN + CAPTION_W + 3 * (PANEL + GAP);
        canvas.text(cx, ty, "entropy", TEXT_SCALE, MUTED);
        draw_colorbar(&mut canvas, cx + 4, ty + LINE, PANEL);
    }

    if let Some(dice) = &report.dice {
        let top = header_h + rows.len() * ROW_H + GAP;
        draw_dice_chart(&mut canvas, MARGIN, top, width - 2 * MARGIN, CHART_H, dice);
    }
    Ok(canvas)
}

/// Grouped bars (before grey, after blue) per row, y axis 0..1, value on each bar.
fn draw_dice_chart(canvas: &mut Canvas, x: usize, y: usize, w: usize, h: usize, dice: &DiceTable) {
    canvas.fill_rect(x, y, w, 1, GRID);
    let title = format!("Dice before / after adaptation, per {}", dice.row_kind);
    canvas.text(x, y + 8, &fit(&title, w / (8 * TEXT_SCALE)), TEXT_SCALE, INK);
    // Legend.
    let ly = y + 8 + LINE;
    canvas.fill_rect(x, ly, 16, 16, BEFORE);
    canvas.text(x + 22, ly, "before", TEXT_SCALE, INK);
    canvas.fill_rect(x + 140, ly, 16, 16, AFTER);
    canvas.text(x + 162, ly, "after", TEXT_SCALE, INK);
    let chars = w.saturating_sub(260) / (8 * TEXT_SCALE);
    canvas.text(x + 260, ly, &fit(&dice.description, chars), TEXT_SCALE, MUTED);

    let axis_x = x + 72;
    let plot_top = ly + LINE + 16;
    let plot_h = h - (plot_top - y) - LINE - 8;
    let plot_w = w - (axis_x - x);
    let y_of = |v: f64| plot_top + plot_h - (v.clamp(0.0, 1.0) * plot_h as f64).round() as usize;
    for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let ty = y_of(tick);
        canvas.fill_rect(axis_x, ty, plot_w, 1, GRID);
        canvas.text(x, ty.saturating_sub(8), &format!("{tick:.2}"), TEXT_SCALE, MUTED);
    }
    canvas.fill_rect(axis_x, plot_top, 1, plot_h + 1, INK);
    canvas.fill_rect(axis_x, y_of(0.0), plot_w, 1, INK);
    if dice.rows.is_empty() {
        return;
    }
    let group_w = (plot_w / dice.rows.len()).max(1);
    let bar_w = (group_w / 3).clamp(1, 90);
    for (n, row) in dice.rows.iter().enumerate() {
        let gx = axis_x + n * group_w + (group_w - 2 * bar_w) / 2;
        for (b, (value, color)) in [(row.before, BEFORE), (row.after, AFTER)].into_iter().enumerate() {
            let bx = gx + b * bar_w;
            let label = if value.is_finite() { format!("{value:.2}") } else { "n/a".to_string() };
            if value.is_finite() {
                let top = y_of(value);
                canvas.fill_rect(bx + 2, top, bar_w - 4, y_of(0.0) - top, color);
            }
            let scale = if bar_w >= 72 { TEXT_SCALE } else { 1 };
            let lw = text_width(&label, scale);
            let lx = bx + bar_w.saturating_sub(lw) / 2;
            let vy = if value.is_finite() { y_of(value) } else { y_of(0.0) };
            canvas.text(lx, vy.saturating_sub(4 + 8 * scale), &label, scale, INK);
        }
        let name = fit(&row.name, (group_w / (8 * TEXT_SCALE)).max(1));
        let nx = axis_x + n * group_w + group_w.saturating_sub(text_width(&name, TEXT_SCALE)) / 2;
        canvas.text(nx, y_of(0.0) + 6, &name, TEXT_SCALE, INK);
    }
}

fn number(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.4}")
    } else {
        "n/a".to_string()
    }
}

/// The Markdown page: the figure, the selection table, the Dice table, the reliable set, notes.
pub fn render_markdown(report: &Report<'_>, png_name: &str) -> String {
    let sel = report.selection;
    let mut md = String::new();
    let _ = writeln!(md, "# {}\n", report.title);
    let _ = writeln!(md, "![selected volumes with their entropy overlay and the Dice chart]({png_name})\n");
    let _ = writeln!(
        md,
        "Slices are mid-slices of each volume reoriented to RAS, shown in radiological convention \
         (patient right on the image left). The overlay is the model's normalised predictive entropy \
         (0 = certain, 1 = uniform over the classes), transparent below {OVERLAY_FLOOR}.\n"
    );
    let _ = writeln!(
        md,
        "## Selection\n\nMethod `{}`, budget {}, seed {}, gap `{}`, weights DKD {} / ASD {}.\n",
        sel.method,
        sel.options.budget,
        sel.options.seed,
        sel.options.gap.name(),
        sel.options.w_dkd,
        sel.options.w_asd
    );
    let _ = writeln!(md, "| order | id | combined | gap | gap rank | diversity | DKD | DKD rank | ASD | ASD rank |");
    let _ = writeln!(md, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for p in &sel.picks {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            p.order + 1,
            p.id,
            number(p.combined),
            number(p.gap),
            number(p.gap_rank),
            number(p.diversity),
            number(p.dkd),
            number(p.dkd_rank),
            number(p.asd),
            number(p.asd_rank)
        );
    }
    let reliable = if sel.reliable.is_empty() { "none".to_string() } else { sel.reliable.join(", ") };
    let _ = writeln!(md, "\nReliable unlabeled volumes for pseudo-labels: {reliable}.\n");
    if let Some(dice) = &report.dice {
        let _ = writeln!(md, "## Dice\n\n{}\n", dice.description);
        let _ = writeln!(md, "| {} | before | after | change |", dice.row_kind);
        let _ = writeln!(md, "|---|---:|---:|---:|");
        for r in &dice.rows {
            let change = if r.before.is_finite() && r.after.is_finite() {
                format!("{:+.4}", r.after - r.before)
            } else {
                "n/a".into()
            };
            let _ = writeln!(md, "| {} | {} | {} | {} |", r.name, number(r.before), number(r.after), change);
        }
        md.push('\n');
    }
    if !report.notes.is_empty() {
        let _ = writeln!(md, "## Notes\n");
        for note in &report.notes {
            let _ = writeln!(md, "- {note}");
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use asfda::score::{Score, ScoreOptions};
    use asfda::select::{select, SelectOptions};

    const BLACK: Rgb = [0, 0, 0];

    fn ras(dims: [usize; 3], spacing: f64, f: impl Fn(usize, usize, usize) -> f32) -> Volume {
        let mut data = Vec::new();
        for k in 0..dims[2] {
            for j in 0..dims[1] {
                for i in 0..dims[0] {
                    data.push(f(i, j, k));
                }
            }
        }
        let mut a = [[0.0; 4]; 4];
        for (d, row) in a.iter_mut().enumerate().take(3) {
            row[d] = spacing;
        }
        a[3][3] = 1.0;
        Volume::new(data, dims, 1, a).unwrap()
    }

    fn decode(png_bytes: &[u8]) -> (u32, u32, Vec<u8>) {
        let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    fn selection_of(ids: &[&str]) -> Selection {
        let scores: Vec<Score> = ids
            .iter()
            .enumerate()
            .map(|(n, id)| Score {
                format_version: asfda::score::SCORE_FORMAT_VERSION,
                id: id.to_string(),
                embedding: vec![1.0, n as f32, 0.5],
                gap_kl: 0.1 * (n + 1) as f64,
                gap_anchor: 0.1,
                asd: 0.2 / (n + 1) as f64,
                asd_threshold: 0.5,
                confidence: 0.9,
                foreground_fraction: 0.3,
                entropy_histogram: vec![],
                voxels: 8,
                foreground_voxels: 2,
                options: ScoreOptions::default(),
            })
            .collect();
        let options = SelectOptions { budget: ids.len(), ..Default::default() };
        select(&scores, &[], &options).unwrap()
    }

    #[test]
    fn glyphs_are_drawn_and_clipped() {
        let mut c = Canvas::new(40, 20, WHITE);
        let w = c.text(0, 0, "A", 2, BLACK);
        assert_eq!(w, 16);
        let inked = (0..16).flat_map(|y| (0..16).map(move |x| (x, y))).filter(|&(x, y)| c.pixel(x, y) == BLACK);
        assert!(inked.count() > 20, "'A' must ink pixels");
        assert!((16..40).all(|x| (0..20).all(|y| c.pixel(x, y) == WHITE)), "nothing outside the glyph box");
        // A space draws nothing; drawing past the edge does not panic.
        let before = c.clone();
        c.text(20, 0, " ", 2, BLACK);
        assert_eq!(c, before);
        c.text(35, 15, "WW", 2, BLACK);
    }

    #[test]
    fn colormap_is_ordered_dark_to_light() {
        let lum = |c: Rgb| 0.299 * c[0] as f64 + 0.587 * c[1] as f64 + 0.114 * c[2] as f64;
        let steps: Vec<f64> = (0..=20).map(|i| lum(colormap(i as f64 / 20.0))).collect();
        assert!(steps.windows(2).all(|w| w[1] > w[0]), "{steps:?}");
        assert_eq!(colormap(-1.0), colormap(0.0));
        assert_eq!(colormap(f64::NAN), colormap(0.0));
        assert_eq!(overlay_alpha(0.0), 0.0);
        assert!(overlay_alpha(1.0) > 0.8 && overlay_alpha(0.5) > overlay_alpha(0.2));
    }

    #[test]
    fn mid_slices_follow_the_radiological_convention() {
        // Value = which octant: +1 if right (large i), +10 if anterior, +100 if superior.
        let v = ras([4, 6, 8], 1.0, |i, j, k| {
            (i >= 2) as u8 as f32 + 10.0 * (j >= 3) as u8 as f32 + 100.0 * (k >= 4) as u8 as f32
        });
        let axial = mid_slice(&v, Plane::Axial);
        assert_eq!((axial.cols, axial.rows), (4, 6));
        // Top-left: patient right, anterior.
        assert_eq!(axial.values[0] % 100.0, 11.0);
        // Bottom-right: left, posterior.
        assert_eq!(axial.values[axial.values.len() - 1] % 100.0, 0.0);
        let coronal = mid_slice(&v, Plane::Coronal);
        assert_eq!((coronal.cols, coronal.rows), (4, 8));
        assert_eq!(coronal.values[0] - 10.0, 101.0, "top-left is right and superior");
        let sagittal = mid_slice(&v, Plane::Sagittal);
        assert_eq!((sagittal.cols, sagittal.rows), (6, 8));
        // The mid sagittal slice (i = 2) is in the right half: +1 everywhere.
        assert_eq!(sagittal.values[0], 111.0, "top-left is anterior and superior");
        assert_eq!(sagittal.values[sagittal.values.len() - 1], 1.0, "bottom-right is posterior and inferior");
    }

    fn figure_for(
        entropy_value: impl Fn(usize, usize, usize) -> f32,
        dice: Option<DiceTable>,
    ) -> (Canvas, Report<'static>) {
        let image = Box::leak(Box::new(ras([20, 24, 16], 2.0, |i, j, k| (i + j + k) as f32)));
        let entropy = Box::leak(Box::new(ras([20, 24, 16], 2.0, entropy_value)));
        let selection = Box::leak(Box::new(selection_of(&["case_a"])));
        let report = Report {
            title: "test report".into(),
            selection,
            volumes: vec![ReportVolume { id: "case_a", image, entropy }],
            dice,
            notes: vec!["synthetic".into()],
        };
        (render_figure(&report).unwrap(), report)
    }

    #[test]
    fn the_overlay_colours_pixels_where_entropy_is_high() {
        // Entropy 1 in the right half of the brain (large i), 0 elsewhere.
        let (plain, _) = figure_for(|_, _, _| 0.0, None);
        let (hot, _) = figure_for(|i, _, _| if i >= 10 { 1.0 } else { 0.0 }, None);
        assert_eq!((plain.width, plain.height), (hot.width, hot.height));
        // The axial panel: patient right is on the image left, so only the left half changes.
        let px = MARGIN + CAPTION_W;
        let py = MARGIN + LINE * 3 + GAP + LINE;
        let changed = |x0: usize, x1: usize| {
            (py + 40..py + PANEL - 40)
                .flat_map(|y| (x0..x1).map(move |x| (x, y)))
                .filter(|&(x, y)| plain.pixel(x, y) != hot.pixel(x, y))
                .count()
        };
        let left = changed(px + 30, px + PANEL / 2 - 20);
        let right = changed(px + PANEL / 2 + 20, px + PANEL - 30);
        assert!(left > 1000, "high entropy must colour the panel ({left} pixels changed)");
        assert_eq!(right, 0, "zero entropy must leave the image as it is");
        // A coloured pixel is not grey.
        let (x, y) = (px + 60, py + PANEL / 2);
        let [r, g, b] = hot.pixel(x, y);
        assert!(r != g || g != b, "overlay pixel {:?} is grey", [r, g, b]);
    }

    #[test]
    fn png_decodes_with_the_expected_size_and_text() {
        let dice = DiceTable {
            row_kind: "class".into(),
            description: "mean over 2 volumes".into(),
            rows: vec![
                DiceRow { name: "gm".into(), before: 0.5, after: 0.75 },
                DiceRow { name: "wm".into(), before: f64::NAN, after: 0.9 },
            ],
        };
        let (canvas, report) = figure_for(|_, _, _| 0.3, Some(dice));
        let expected_h = MARGIN + LINE * 3 + ROW_H + CHART_H + GAP + MARGIN;
        assert_eq!(canvas.height, expected_h);
        let (w, h, pixels) = decode(&canvas.to_png().unwrap());
        assert_eq!((w as usize, h as usize), (canvas.width, canvas.height));
        assert_eq!(pixels, canvas.rgb);
        // The title is drawn: its first glyph's box holds ink.
        let ink = (MARGIN..MARGIN + 16).flat_map(|y| (MARGIN..MARGIN + 16).map(move |x| (x, y)));
        assert!(ink.filter(|&(x, y)| canvas.pixel(x, y) == INK).count() > 10);
        // The "after" bar of the first class reaches 0.75 of the plot: blue pixels in the chart.
        let chart_top = MARGIN + LINE * 3 + ROW_H;
        let blue = (chart_top..canvas.height)
            .flat_map(|y| (0..canvas.width).map(move |x| (x, y)))
            .filter(|&(x, y)| canvas.pixel(x, y) == AFTER)
            .count();
        assert!(blue > 1000, "after bars drawn ({blue} px)");

        let dir = tempfile::tempdir().unwrap();
        let files = write_report(&report, dir.path()).unwrap();
        let md = std::fs::read_to_string(&files.markdown).unwrap();
        assert!(md.contains("| 1 | case_a |"), "{md}");
        assert!(md.contains("| gm | 0.5000 | 0.7500 | +0.2500 |"), "{md}");
        assert!(md.contains("| wm | n/a | 0.9000 | n/a |"), "{md}");
        assert_eq!(decode(&std::fs::read(&files.png).unwrap()).2, canvas.rgb);
    }

    #[test]
    fn bad_inputs_are_named() {
        let image = ras([4, 4, 4], 1.0, |_, _, _| 1.0);
        let other_grid = ras([4, 4, 5], 1.0, |_, _, _| 0.0);
        let selection = selection_of(&["a"]);
        let mut report = Report {
            title: "t".into(),
            selection: &selection,
            volumes: vec![ReportVolume { id: "zzz", image: &image, entropy: &image }],
            dice: None,
            notes: vec![],
        };
        let err = render_figure(&report).unwrap_err();
        assert!(err.message().contains("'zzz' is not among"), "{err}");
        report.volumes = vec![ReportVolume { id: "a", image: &image, entropy: &other_grid }];
        let err = render_figure(&report).unwrap_err();
        assert!(err.message().contains("entropy of 'a'"), "{err}");
    }
}
