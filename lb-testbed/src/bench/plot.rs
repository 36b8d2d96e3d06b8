//! PNG bar charts for the report (plotters, bitmap backend). Text is drawn
//! with DejaVu Sans read at run time from the fonts-dejavu-core package
//! (`cargo xtask setup` installs it), so the build needs no font library.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

use super::stats::Spread;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const COLOURS: [RGBColor; 7] = [
    RGBColor(120, 120, 120),
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(44, 160, 44),
    RGBColor(140, 86, 75),
];

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("reading the font {FONT} (install fonts-dejavu-core): {0}")]
    Font(String),
    #[error("drawing {path}: {msg}")]
    Draw { path: String, msg: String },
}

/// A chart: groups along x (e.g. scales), one bar per series in each group,
/// its height the median and a whisker from min to max.
pub struct Bars<'a> {
    pub title: &'a str,
    pub y_label: &'a str,
    pub groups: Vec<String>,
    /// `(series name, one spread per group)`.
    pub series: Vec<(&'a str, Vec<Spread>)>,
    /// A logarithmic y axis, for figures spanning decades.
    pub log_y: bool,
    /// The colour of the first series, as an index into the palette
    /// (grey, blue, red, orange, purple, green, brown), so a mode keeps its colour across charts.
    pub first_colour: usize,
}

fn register_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = std::fs::read(FONT).map_err(|e| e.to_string())?;
            // Registered fonts live as long as the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| "not a usable TrueType font".to_string())
        })
        .clone()
        .map_err(PlotError::Font)
}

impl Bars<'_> {
    /// Writes the chart to `path` (800x450 PNG).
    pub fn draw(&self, path: &Path) -> Result<(), PlotError> {
        register_font()?;
        let err = |e: &dyn std::fmt::Display| PlotError::Draw {
            path: path.display().to_string(),
            msg: e.to_string(),
        };
        let top = self
            .series
            .iter()
            .flat_map(|(_, s)| s.iter().map(|s| s.max))
            .fold(0.0_f64, f64::max)
            // Room above the bars for the legend.
            * if self.log_y { 8.0 } else { 1.4 };
        let bottom = self
            .series
            .iter()
            .flat_map(|(_, s)| s.iter().map(|s| s.min))
            .filter(|&v| v > 0.0)
            .fold(f64::INFINITY, f64::min)
            / 2.0;
        let root = BitMapBackend::new(path, (800, 450)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let groups = self.groups.len() as f64;
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(self.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(70);
        let x_range = 0.0..groups;
        let labels = self.groups.clone();
        let x_fmt = move |x: &f64| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 1e-6 {
                labels.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        let bottom = if bottom.is_finite() { bottom } else { 1e-3 };
        let base = if self.log_y { bottom } else { 0.0 };
        let n = self.series.len() as f64;
        let width = 0.8 / n;
        macro_rules! draw_on {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .disable_x_mesh()
                    .x_labels(2 * self.groups.len() + 1)
                    .x_label_formatter(&x_fmt)
                    .y_desc(self.y_label)
                    .draw()
                    .map_err(|e| err(&e))?;
                for (k, (name, spreads)) in self.series.iter().enumerate() {
                    let colour = COLOURS[(k + self.first_colour) % COLOURS.len()];
                    let x0 = |g: usize| g as f64 + 0.1 + k as f64 * width;
                    chart
                        .draw_series(spreads.iter().enumerate().map(|(g, s)| {
                            Rectangle::new(
                                [(x0(g), base), (x0(g) + width * 0.9, s.median)],
                                colour.filled(),
                            )
                        }))
                        .map_err(|e| err(&e))?
                        .label(*name)
                        .legend(move |(x, y)| {
                            Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled())
                        });
                    chart
                        .draw_series(spreads.iter().enumerate().map(|(g, s)| {
                            let x = x0(g) + width * 0.45;
                            PathElement::new(vec![(x, s.min), (x, s.max)], BLACK)
                        }))
                        .map_err(|e| err(&e))?;
                }
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .position(SeriesLabelPosition::UpperRight)
                    .draw()
                    .map_err(|e| err(&e))?;
            }};
        }
        if self.log_y {
            draw_on!(builder
                .build_cartesian_2d(x_range, (bottom..top).log_scale())
                .map_err(|e| err(&e))?);
        } else {
            draw_on!(builder
                .build_cartesian_2d(x_range, 0.0..top)
                .map_err(|e| err(&e))?);
        }
        root.present().map_err(|e| err(&e))?;
        Ok(())
    }
}
