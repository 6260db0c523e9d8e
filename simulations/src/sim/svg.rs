//! Hand-written SVG charts for the report: axes with round-numbered ticks, and series as
//! step lines (CDFs, spread curves), dots (scatter) or bars (histograms). Small on purpose;
//! a plotting crate would outweigh the simulator.

use std::fmt::Write as _;

use super::report::esc;

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 340.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 50.0;

/// How a series is drawn.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    /// A staircase through the points (CDFs).
    Step,
    /// One dot per point.
    Dots,
    /// One bar per point, centred on x.
    Bars,
}

/// A named set of points.
#[derive(Debug, Clone)]
pub(super) struct Series {
    pub(super) name: String,
    pub(super) points: Vec<(f64, f64)>,
    pub(super) kind: Kind,
    pub(super) color: &'static str,
}

/// A chart: title, axis labels, series, and vertical tick marks along the x axis.
#[derive(Debug, Clone)]
pub(super) struct Chart {
    pub(super) title: String,
    pub(super) x_label: String,
    pub(super) y_label: String,
    pub(super) series: Vec<Series>,
    /// Fixed top of the y axis (1.0 for fractions); else from the data.
    pub(super) y_max: Option<f64>,
    /// Marks at x positions (churn events), with their colour.
    pub(super) markers: Vec<(f64, &'static str)>,
}

impl Chart {
    /// The chart as an inline `<svg>` element.
    pub(super) fn render(&self) -> String {
        let all = self.series.iter().flat_map(|s| s.points.iter());
        let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
        for &(x, y) in all {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y1 = y1.max(y);
        }
        for &(x, _) in &self.markers {
            x0 = x0.min(x);
            x1 = x1.max(x);
        }
        if !x0.is_finite() {
            (x0, x1) = (0.0, 1.0);
        }
        let bars = self.series.iter().any(|s| matches!(s.kind, Kind::Bars));
        if bars {
            x0 -= 0.5;
            x1 += 0.5;
        }
        let x0 = if x0 > 0.0 && x0 < (x1 - x0) { 0.0 } else { x0 };
        let (x0, x1, x_step) = nice_range(x0, x1);
        let (_, y1, y_step) = nice_range(0.0, self.y_max.unwrap_or(y1).max(1e-9));
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * plot_w;
        let sy = |y: f64| TOP + plot_h - y / y1 * plot_h;

        let mut s = String::new();
        let _ = write!(
            s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
             viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"system-ui,sans-serif\" font-size=\"12\">\
             <rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>\
             <text x=\"{LEFT}\" y=\"20\" font-size=\"14\" font-weight=\"600\">{}</text>",
            esc(&self.title)
        );
        // Grid and ticks.
        let mut y = 0.0;
        while y <= y1 + y_step * 1e-6 {
            let py = sy(y);
            let _ = write!(
                s,
                "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{py:.1}\" y2=\"{py:.1}\" stroke=\"#eee\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#555\">{}</text>",
                WIDTH - RIGHT,
                LEFT - 6.0,
                py + 4.0,
                tick_label(y, y_step)
            );
            y += y_step;
        }
        let mut x = x0;
        while x <= x1 + x_step * 1e-6 {
            let px = sx(x);
            let _ = write!(
                s,
                "<line x1=\"{px:.1}\" x2=\"{px:.1}\" y1=\"{TOP}\" y2=\"{:.1}\" stroke=\"#f3f3f3\"/>\
                 <text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">{}</text>",
                TOP + plot_h,
                TOP + plot_h + 16.0,
                tick_label(x, x_step)
            );
            x += x_step;
        }
        let _ = write!(
            s,
            "<line x1=\"{LEFT}\" x2=\"{LEFT}\" y1=\"{TOP}\" y2=\"{b:.1}\" stroke=\"#333\"/>\
             <line x1=\"{LEFT}\" x2=\"{r:.1}\" y1=\"{b:.1}\" y2=\"{b:.1}\" stroke=\"#333\"/>\
             <text x=\"{cx:.1}\" y=\"{xl:.1}\" text-anchor=\"middle\">{xlab}</text>\
             <text transform=\"translate(16 {cy:.1}) rotate(-90)\" text-anchor=\"middle\">{ylab}</text>",
            b = TOP + plot_h,
            r = WIDTH - RIGHT,
            cx = LEFT + plot_w / 2.0,
            xl = HEIGHT - 12.0,
            cy = TOP + plot_h / 2.0,
            xlab = esc(&self.x_label),
            ylab = esc(&self.y_label),
        );
        for &(x, color) in &self.markers {
            let px = sx(x);
            let _ = write!(
                s,
                "<line x1=\"{px:.1}\" x2=\"{px:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{color}\" stroke-width=\"1.5\"/>",
                TOP + plot_h - 10.0,
                TOP + plot_h
            );
        }
        let bar_w = (plot_w / ((x1 - x0) / 1.0).max(1.0) * 0.8).clamp(1.0, 40.0);
        for series in &self.series {
            match series.kind {
                Kind::Step => {
                    let mut d = String::new();
                    let mut prev: Option<(f64, f64)> = None;
                    for &(x, y) in &series.points {
                        match prev {
                            None => {
                                let _ = write!(d, "M{:.1},{:.1}", sx(x), sy(y));
                            }
                            Some(_) => {
                                let _ = write!(d, "H{:.1}V{:.1}", sx(x), sy(y));
                            }
                        }
                        prev = Some((x, y));
                    }
                    let _ = write!(
                        s,
                        "<path d=\"{d}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>",
                        series.color
                    );
                }
                Kind::Dots => {
                    for &(x, y) in &series.points {
                        let _ = write!(
                            s,
                            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2\" fill=\"{}\" fill-opacity=\"0.6\"/>",
                            sx(x),
                            sy(y),
                            series.color
                        );
                    }
                }
                Kind::Bars => {
                    for &(x, y) in &series.points {
                        let _ = write!(
                            s,
                            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{bar_w:.1}\" height=\"{:.1}\" fill=\"{}\"/>",
                            sx(x) - bar_w / 2.0,
                            sy(y),
                            (TOP + plot_h - sy(y)).max(0.0),
                            series.color
                        );
                    }
                }
            }
        }
        // Legend: top left for rising curves (CDFs end top right), else top right.
        let rising = self.series.iter().all(|s| matches!(s.kind, Kind::Step));
        let lx = if rising {
            LEFT + 16.0
        } else {
            WIDTH - RIGHT - 260.0
        };
        for (i, series) in self.series.iter().enumerate() {
            let ly = TOP + 8.0 + 16.0 * i as f64;
            let _ = write!(
                s,
                "<rect x=\"{lx:.1}\" y=\"{:.1}\" width=\"12\" height=\"4\" fill=\"{}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#333\">{}</text>",
                ly - 4.0,
                series.color,
                lx + 18.0,
                ly + 2.0,
                esc(&series.name)
            );
        }
        s.push_str("</svg>");
        s
    }
}

/// Widens `[lo, hi]` to multiples of a round step (1, 2 or 5 times a power of ten), about
/// five steps across.
fn nice_range(lo: f64, hi: f64) -> (f64, f64, f64) {
    let span = if hi > lo { hi - lo } else { hi.abs().max(1.0) };
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let lo = (lo / step).floor() * step;
    let hi = ((hi / step).ceil() * step).max(lo + step);
    (lo, hi, step)
}

fn tick_label(v: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{v:.0}")
    } else {
        let decimals = (-step.log10().floor()) as usize;
        format!("{v:.decimals$}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_round() {
        assert_eq!(nice_range(0.0, 1.0), (0.0, 1.0, 0.2));
        assert_eq!(nice_range(0.0, 730.0), (0.0, 800.0, 200.0));
        let (lo, hi, step) = nice_range(3.0, 47.0);
        assert_eq!((lo, hi, step), (0.0, 50.0, 10.0));
    }

    #[test]
    fn a_chart_is_one_svg_element_with_escaped_text() {
        let svg = Chart {
            title: "a < b".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series: vec![Series {
                name: "s".into(),
                points: vec![(0.0, 0.0), (10.0, 0.5), (20.0, 1.0)],
                kind: Kind::Step,
                color: "#000",
            }],
            y_max: Some(1.0),
            markers: vec![(5.0, "#f00")],
        }
        .render();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("a &lt; b"));
        assert!(svg.contains("<path d=\"M"));
    }
}
