//! Hand-written SVG charts for simulation reports: config change propagation and failure
//! detection time. Each chart is a standalone 800x480 SVG document.

use std::fmt::Write as _;

use crate::report::{ChangeFigures, DetectionFigures, fmt_count, fmt_ms, percentile};

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 480.0;
/// Plot area, in SVG pixels.
const LEFT: f64 = 80.0;
const RIGHT: f64 = 776.0;
const TOP: f64 = 64.0;
const BOTTOM: f64 = 412.0;

const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
];
const GRID: &str = "#e4e4e4";
const MUTED: &str = "#666666";
const MODEL: &str = "#888888";
/// Changes listed in the propagation legend; further ones are drawn but summed up in one line.
const LEGEND_MAX: usize = 12;

/// Line chart of the fraction of target nodes holding each config change over the time since
/// the change, with the epidemic model of the first change (labelled with `fanout`, omitted
/// when 0) and the 99.9% level. Without changes, a chart saying so.
pub(crate) fn propagation_svg(changes: &[ChangeFigures], fanout: usize) -> String {
    let mut svg = Svg::new("Config change propagation");
    if changes.is_empty() {
        svg.placeholder("no config changes in this scenario");
        return svg.finish();
    }

    let series: Vec<Vec<(f64, f64)>> = changes.iter().map(informed_fractions).collect();
    let model: Vec<(f64, f64)> = changes[0]
        .model
        .iter()
        .copied()
        .filter(|&(ms, f)| ms.is_finite() && ms >= 0.0 && f.is_finite())
        .collect();
    // The axis spans the change curves and the model up to its 99.9% point (not its tail).
    let curves_end = series.iter().flatten().map(|p| p.0).fold(0.0, f64::max);
    let model_end = model.iter().find(|p| p.1 >= 0.999).map_or(0.0, |p| p.0);
    let mut x_end = curves_end.max(model_end);
    if x_end <= 0.0 {
        x_end = model.iter().map(|p| p.0).fold(0.0, f64::max);
    }
    let x = Axis::nice(0.0, if x_end > 0.0 { x_end } else { 1000.0 }, false);
    let y = Axis {
        lo: 0.0,
        hi: 1.0,
        step: 0.25,
    };

    svg.frame(&x, &y, |v| format!("{:.0}%", v * 100.0));
    svg.axis_titles(
        "time since the change (ms)",
        "fraction of target nodes informed",
    );

    // The 99.9% level.
    let level = y.y_px(0.999);
    svg.line(
        LEFT,
        level,
        RIGHT,
        level,
        "stroke=\"#444444\" stroke-width=\"1\" stroke-dasharray=\"1,3\"",
    );
    svg.text(RIGHT - 4.0, level - 5.0, "end", "fill=\"#444444\"", "99.9%");

    let mut legend: Vec<(String, String)> = Vec::new();
    let model_style =
        format!("stroke=\"{MODEL}\" stroke-width=\"1.5\" stroke-dasharray=\"6,4\" fill=\"none\"");
    if !model.is_empty() {
        let clipped = clip_to(&model, x.hi);
        svg.polyline(&x, &y, &clipped, &model_style);
    }
    for (i, (change, points)) in changes.iter().zip(&series).enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let style = format!("stroke=\"{colour}\" stroke-width=\"2\" fill=\"none\"");
        let mut points = points.clone();
        // A change that finished early stays at its final level to the end of the axis.
        if let Some(&(ms, f)) = points.last()
            && ms < x.hi
        {
            points.push((x.hi, f));
        }
        svg.polyline(&x, &y, &points, &style);
        if i < LEGEND_MAX {
            legend.push((change.label.clone(), style));
        }
    }
    if changes.len() > LEGEND_MAX {
        legend.push((
            format!(
                "… and {} more",
                fmt_count((changes.len() - LEGEND_MAX) as u64)
            ),
            String::new(),
        ));
    }
    if !model.is_empty() {
        let fanout = if fanout > 0 {
            format!(", fanout {fanout}")
        } else {
            String::new()
        };
        legend.push((
            format!(
                "epidemic model (N={}{fanout})",
                fmt_count(changes[0].targets as u64)
            ),
            model_style,
        ));
    }
    svg.legend(&legend);
    svg.finish()
}

/// Histogram of the detection time samples (20 to 40 bins), with the p50 and p99 marked.
/// Without samples, a chart saying so.
pub(crate) fn detection_svg(d: &DetectionFigures) -> String {
    let mut samples: Vec<f64> = d
        .samples_ms
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    samples.sort_by(f64::total_cmp);
    let mut svg = Svg::new(&format!(
        "Failure detection time (crash → offline), {} samples",
        fmt_count(samples.len() as u64)
    ));
    svg.text(
        WIDTH / 2.0,
        48.0,
        "middle",
        &format!("fill=\"{MUTED}\""),
        &format!(
            "{} crashed, {} undetected, {} false positives",
            fmt_count(d.crashed as u64),
            fmt_count(d.undetected as u64),
            fmt_count(d.false_positives as u64)
        ),
    );
    let (Some(&first), Some(&last)) = (samples.first(), samples.last()) else {
        svg.placeholder("no failure detection samples in this scenario");
        return svg.finish();
    };

    let bins = ((samples.len() as f64).sqrt().round() as usize).clamp(20, 40);
    let (lo, hi) = if last - first > 1e-9 {
        (first, last)
    } else {
        let pad = (last.abs() * 0.05).max(1.0);
        (first - pad, last + pad)
    };
    let bin_width = (hi - lo) / bins as f64;
    let mut counts = vec![0_usize; bins];
    for &v in &samples {
        let bin = ((v - lo) / bin_width).floor().max(0.0) as usize;
        counts[bin.min(bins - 1)] += 1;
    }

    // Start the axis at 0 unless the samples sit far from it.
    let axis_lo = if lo >= 0.0 && lo <= hi - lo { 0.0 } else { lo };
    let x = Axis::nice(axis_lo, hi, false);
    let y = Axis::nice(0.0, counts.iter().copied().max().unwrap_or(0) as f64, true);
    svg.frame(&x, &y, |v| y.label(v));
    svg.axis_titles("detection time (ms)", "(observer, crashed node) pairs");

    for (i, &count) in counts.iter().enumerate() {
        if count == 0 {
            continue;
        }
        let left = x.x_px(lo + bin_width * i as f64);
        let right = x.x_px(lo + bin_width * (i + 1) as f64);
        let top = y.y_px(count as f64);
        svg.push(format_args!(
            "<rect class=\"bar\" x=\"{left:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" \
             fill=\"#4c78a8\" stroke=\"#ffffff\" stroke-width=\"0.5\"/>\n",
            (right - left).max(0.5),
            (BOTTOM - top).max(0.0),
        ));
    }

    let p50 = d.p50_ms.or_else(|| percentile(&samples, 50.0));
    let p99 = d.p99_ms.or_else(|| percentile(&samples, 99.0));
    for (name, value, colour, row) in [("p50", p50, "#e45756", 0.0), ("p99", p99, "#b22222", 1.0)] {
        let Some(ms) = value.filter(|v| v.is_finite() && *v >= x.lo && *v <= x.hi) else {
            continue;
        };
        let px = x.x_px(ms);
        svg.line(
            px,
            TOP,
            px,
            BOTTOM,
            &format!("stroke=\"{colour}\" stroke-width=\"1.5\" stroke-dasharray=\"5,3\""),
        );
        // p50 to the left of its line, p99 to the right (or left, near the right edge), one
        // row apart, so close values do not overlap.
        let right_side = row > 0.0 && px < RIGHT - 110.0;
        let (anchor, dx) = if right_side {
            ("start", 4.0)
        } else {
            ("end", -4.0)
        };
        svg.text(
            px + dx,
            TOP + 14.0 + row * 16.0,
            anchor,
            &format!("fill=\"{colour}\""),
            &format!("{name} {}", fmt_ms(ms)),
        );
    }
    svg.finish()
}

/// The informed fraction of one change over time, from its curve; empty if nothing to plot.
fn informed_fractions(change: &ChangeFigures) -> Vec<(f64, f64)> {
    let peak = change.curve.iter().map(|p| p.1).max().unwrap_or(0);
    let of = if change.targets > 0 {
        change.targets
    } else {
        peak
    };
    if of == 0 {
        return Vec::new();
    }
    change
        .curve
        .iter()
        .filter(|p| p.0.is_finite() && p.0 >= 0.0)
        .map(|&(ms, n)| (ms, (n as f64 / of as f64).min(1.0)))
        .collect()
}

/// The points of `curve` up to `x_max`, ending exactly at `x_max` if the curve goes further.
fn clip_to(curve: &[(f64, f64)], x_max: f64) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(curve.len());
    for &(x, y) in curve {
        if x <= x_max {
            out.push((x, y));
            continue;
        }
        if let Some(&(px, py)) = out.last()
            && x > px
        {
            out.push((x_max, py + (y - py) * (x_max - px) / (x - px)));
        }
        break;
    }
    out
}

/// A linear axis from `lo` to `hi` with a tick every `step`.
struct Axis {
    lo: f64,
    hi: f64,
    step: f64,
}

impl Axis {
    /// An axis covering `lo..=hi` with about five ticks on round values; `integer` keeps the
    /// step whole (for counts).
    fn nice(lo: f64, hi: f64, integer: bool) -> Self {
        let lo = if lo.is_finite() { lo } else { 0.0 };
        let hi = if hi.is_finite() && hi > lo {
            hi
        } else {
            lo + 1.0
        };
        let raw = (hi - lo) / 5.0;
        let magnitude = 10_f64.powf(raw.log10().floor());
        let ladder: &[f64] = if integer && magnitude <= 1.0 {
            &[1.0, 2.0, 5.0, 10.0]
        } else {
            &[1.0, 2.0, 2.5, 5.0, 10.0]
        };
        let norm = raw / magnitude;
        let mut step = magnitude * ladder.iter().copied().find(|&s| norm <= s).unwrap_or(10.0);
        if integer {
            step = step.max(1.0).round();
        }
        let axis_lo = (lo / step).floor() * step;
        let mut axis_hi = (hi / step).ceil() * step;
        if axis_hi <= axis_lo {
            axis_hi = axis_lo + step;
        }
        Self {
            lo: axis_lo,
            hi: axis_hi,
            step,
        }
    }

    /// Tick positions from `lo` to `hi` inclusive.
    fn ticks(&self) -> Vec<f64> {
        let n = ((self.hi - self.lo) / self.step).round().clamp(1.0, 100.0) as usize;
        (0..=n).map(|i| self.lo + self.step * i as f64).collect()
    }

    /// A tick label with as many decimals as the step needs.
    fn label(&self, v: f64) -> String {
        let mut decimals = 0;
        while decimals < 6 {
            let scaled = self.step * 10_f64.powi(decimals);
            if (scaled - scaled.round()).abs() < 1e-6 {
                break;
            }
            decimals += 1;
        }
        if decimals == 0 && v >= 0.0 {
            fmt_count(v.round() as u64)
        } else {
            format!("{v:.*}", decimals as usize)
        }
    }

    /// Horizontal pixel position of `v` on this axis as the x axis.
    fn x_px(&self, v: f64) -> f64 {
        LEFT + (v - self.lo) / (self.hi - self.lo) * (RIGHT - LEFT)
    }

    /// Vertical pixel position of `v` on this axis as the y axis (up from the bottom).
    fn y_px(&self, v: f64) -> f64 {
        BOTTOM - (v - self.lo) / (self.hi - self.lo) * (BOTTOM - TOP)
    }
}

/// An SVG document being written.
struct Svg {
    out: String,
}

impl Svg {
    /// The document head, a white background and the title.
    fn new(title: &str) -> Self {
        let mut svg = Self { out: String::new() };
        svg.push(format_args!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
             viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <title>{}</title>\n\
             <rect x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{HEIGHT}\" fill=\"#ffffff\"/>\n",
            escape(title)
        ));
        svg.text(
            WIDTH / 2.0,
            28.0,
            "middle",
            "font-size=\"16\" font-weight=\"bold\" fill=\"#222222\"",
            title,
        );
        svg
    }

    fn push(&mut self, args: std::fmt::Arguments<'_>) {
        // Writing into a String cannot fail.
        let _ = self.out.write_fmt(args);
    }

    fn finish(mut self) -> String {
        self.out.push_str("</svg>\n");
        self.out
    }

    fn text(&mut self, x: f64, y: f64, anchor: &str, attrs: &str, text: &str) {
        self.push(format_args!(
            "<text x=\"{x:.1}\" y=\"{y:.1}\" text-anchor=\"{anchor}\" {attrs}>{}</text>\n",
            escape(text)
        ));
    }

    fn line(&mut self, x1: f64, y1: f64, x2: f64, y2: f64, attrs: &str) {
        self.push(format_args!(
            "<line x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\" {attrs}/>\n"
        ));
    }

    /// A polyline through data points on axes `x` and `y`; nothing if fewer than one point.
    fn polyline(&mut self, x: &Axis, y: &Axis, points: &[(f64, f64)], attrs: &str) {
        if points.is_empty() {
            return;
        }
        let mut coords = String::with_capacity(points.len() * 12);
        for (i, &(px, py)) in points.iter().enumerate() {
            if i > 0 {
                coords.push(' ');
            }
            let _ = write!(coords, "{:.1},{:.1}", x.x_px(px), y.y_px(py));
        }
        self.push(format_args!(
            "<polyline points=\"{coords}\" {attrs} stroke-linejoin=\"round\"/>\n"
        ));
    }

    /// Grid lines, tick labels and the axis lines of the plot area.
    fn frame(&mut self, x: &Axis, y: &Axis, y_label: impl Fn(f64) -> String) {
        for tick in x.ticks() {
            let px = x.x_px(tick);
            self.line(px, TOP, px, BOTTOM, &format!("stroke=\"{GRID}\""));
            self.text(
                px,
                BOTTOM + 18.0,
                "middle",
                &format!("fill=\"{MUTED}\""),
                &x.label(tick),
            );
        }
        for tick in y.ticks() {
            let py = y.y_px(tick);
            self.line(LEFT, py, RIGHT, py, &format!("stroke=\"{GRID}\""));
            self.text(
                LEFT - 8.0,
                py + 4.0,
                "end",
                &format!("fill=\"{MUTED}\""),
                &y_label(tick),
            );
        }
        self.line(LEFT, BOTTOM, RIGHT, BOTTOM, "stroke=\"#333333\"");
        self.line(LEFT, TOP, LEFT, BOTTOM, "stroke=\"#333333\"");
    }

    fn axis_titles(&mut self, x_title: &str, y_title: &str) {
        self.text(
            (LEFT + RIGHT) / 2.0,
            HEIGHT - 24.0,
            "middle",
            "fill=\"#222222\"",
            x_title,
        );
        let (cx, cy) = (22.0, (TOP + BOTTOM) / 2.0);
        self.push(format_args!(
            "<text x=\"0\" y=\"0\" text-anchor=\"middle\" fill=\"#222222\" \
             transform=\"translate({cx:.1},{cy:.1}) rotate(-90)\">{}</text>\n",
            escape(y_title)
        ));
    }

    /// A legend box in the lower right of the plot area: one line sample (from its stroke
    /// attributes; none if empty) and label per entry.
    fn legend(&mut self, entries: &[(String, String)]) {
        if entries.is_empty() {
            return;
        }
        let longest = entries
            .iter()
            .map(|e| e.0.chars().count())
            .max()
            .unwrap_or(0);
        let width = 44.0 + longest as f64 * 6.6;
        let height = 10.0 + entries.len() as f64 * 18.0;
        let (left, top) = (RIGHT - width - 12.0, BOTTOM - height - 12.0);
        self.push(format_args!(
            "<rect x=\"{left:.1}\" y=\"{top:.1}\" width=\"{width:.1}\" height=\"{height:.1}\" \
             fill=\"#ffffff\" fill-opacity=\"0.9\" stroke=\"#cccccc\"/>\n"
        ));
        for (i, (label, style)) in entries.iter().enumerate() {
            let y = top + 18.0 + i as f64 * 18.0;
            if !style.is_empty() {
                self.line(left + 8.0, y - 4.0, left + 32.0, y - 4.0, style);
            }
            self.text(left + 38.0, y, "start", "fill=\"#222222\"", label);
        }
    }

    /// Centred grey text in the plot area, for charts with nothing to plot.
    fn placeholder(&mut self, message: &str) {
        self.text(
            WIDTH / 2.0,
            (TOP + BOTTOM) / 2.0,
            "middle",
            &format!("font-size=\"16\" fill=\"{MUTED}\""),
            message,
        );
    }
}

/// `text` with the characters XML gives meaning to escaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::epidemic_curve;

    /// Checks the document is one `<svg>` element whose tags all nest and close, with no NaN.
    fn assert_well_formed(svg: &str) {
        assert!(
            svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
            "{svg}"
        );
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<svg").count(), 1);
        assert_eq!(svg.matches("</svg>").count(), 1);
        assert!(!svg.contains("NaN") && !svg.contains("inf,") && !svg.contains("inf\""));
        let mut open: Vec<&str> = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let end = rest[start..].find('>').expect("unclosed tag") + start;
            let tag = &rest[start + 1..end];
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(open.pop(), Some(name), "mismatched </{name}>");
            } else if !tag.ends_with('/') {
                let name = tag.split_whitespace().next().unwrap_or_default();
                open.push(name);
            }
            assert!(!tag[..tag.len().saturating_sub(1)].contains('<'), "{tag}");
            rest = &rest[end + 1..];
        }
        assert!(open.is_empty(), "unclosed {open:?}");
    }

    fn change(label: &str, targets: usize, spread_ms: f64) -> ChangeFigures {
        let curve: Vec<(f64, usize)> = (0..=targets)
            .step_by(10)
            .map(|n| (spread_ms * n as f64 / targets as f64, n.max(1)))
            .collect();
        ChangeFigures {
            label: label.to_owned(),
            document: "fleet".to_owned(),
            origin: "anchor-0".to_owned(),
            at_s: 10.0,
            targets,
            curve,
            model: epidemic_curve(targets, 3.0, 250.0, 3000.0, 61),
            ..ChangeFigures::default()
        }
    }

    #[test]
    fn axis_ticks_are_round() {
        let axis = Axis::nice(0.0, 347.0, false);
        assert_eq!((axis.lo, axis.hi, axis.step), (0.0, 400.0, 100.0));
        assert_eq!(axis.ticks(), [0.0, 100.0, 200.0, 300.0, 400.0]);
        let counts = Axis::nice(0.0, 12.0, true);
        assert_eq!(counts.step, 5.0);
        assert!(Axis::nice(0.0, 3.0, true).step >= 1.0);
        let small = Axis::nice(0.0, 1.2, false);
        assert_eq!(small.step, 0.25);
        assert_eq!(small.label(0.5), "0.50");
        assert_eq!(Axis::nice(0.0, 4000.0, false).label(2000.0), "2,000");
        let flat = Axis::nice(5.0, 5.0, false);
        assert!(flat.hi > flat.lo);
    }

    #[test]
    fn propagation_chart_has_curves_model_and_legend() {
        let changes = [
            change("policy-1", 1000, 350.0),
            change("site <b> & \"c\"", 100, 900.0),
        ];
        let svg = propagation_svg(&changes, 3);
        assert_well_formed(&svg);
        assert!(svg.contains("Config change propagation"));
        assert!(svg.contains(">policy-1<"));
        assert!(svg.contains("site &lt;b&gt; &amp; &quot;c&quot;"));
        assert!(svg.contains("epidemic model (N=1,000, fanout 3)"));
        assert!(svg.contains(">99.9%<"));
        assert!(svg.contains("time since the change (ms)"));
        assert!(svg.contains("fraction of target nodes informed"));
        assert!(svg.contains("font-family=\"sans-serif\""));
        assert!(svg.contains("width=\"800\" height=\"480\""));
        // Two change curves and the dashed model.
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("stroke-dasharray=\"6,4\""));
        assert!(svg.contains(PALETTE[0]) && svg.contains(PALETTE[1]));
        // The x axis spans the longest curve and the model's 99.9% point (2,500 ms for N=1,000,
        // fanout 3, every 250 ms) with round ticks; the model's tail up to 3,000 ms is clipped.
        assert!(svg.contains(">2,500<"), "{svg}");
        assert!(!svg.contains(">3,000<"));
        assert!(!svg.contains("No config"));
    }

    #[test]
    fn propagation_chart_tolerates_odd_input() {
        let mut odd = change("odd", 0, 0.0);
        odd.curve = vec![(f64::NAN, 3), (0.0, 0)];
        odd.model = vec![(f64::INFINITY, 0.5)];
        let svg = propagation_svg(&[odd], 0);
        assert_well_formed(&svg);
        assert!(!svg.contains("fanout"));
        let many: Vec<ChangeFigures> = (0..15)
            .map(|i| change(&format!("c{i}"), 50, 100.0))
            .collect();
        let svg = propagation_svg(&many, 3);
        assert_well_formed(&svg);
        assert!(svg.contains("… and 3 more"));
    }

    #[test]
    fn empty_propagation_chart_says_so() {
        let svg = propagation_svg(&[], 3);
        assert_well_formed(&svg);
        assert!(svg.contains("Config change propagation"));
        assert!(svg.contains("no config changes in this scenario"));
        assert!(!svg.contains("<polyline"));
    }

    #[test]
    fn detection_histogram_has_bins_and_percentiles() {
        let samples: Vec<f64> = (0..900).map(|i| 2000.0 + f64::from(i % 97) * 8.0).collect();
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        let d = DetectionFigures {
            crashed: 30,
            p50_ms: percentile(&sorted, 50.0),
            p99_ms: percentile(&sorted, 99.0),
            max_ms: sorted.last().copied(),
            samples_ms: samples,
            ..DetectionFigures::default()
        };
        let svg = detection_svg(&d);
        assert_well_formed(&svg);
        assert!(svg.contains("Failure detection time (crash → offline), 900 samples"));
        assert!(svg.contains("30 crashed, 0 undetected, 0 false positives"));
        let bars = svg.matches("class=\"bar\"").count();
        assert!((20..=40).contains(&bars), "{bars} bars");
        assert_eq!(d.p50_ms, Some(2368.0));
        assert!(svg.contains(">p50 2.37 s<"), "{svg}");
        assert!(svg.contains(&format!(">p99 {}<", fmt_ms(d.p99_ms.unwrap_or_default()))));
        assert!(svg.contains("detection time (ms)"));
        assert!(!svg.contains("no failure detection samples"));
    }

    #[test]
    fn detection_histogram_of_identical_samples() {
        let d = DetectionFigures {
            crashed: 1,
            samples_ms: vec![1500.0; 5],
            ..DetectionFigures::default()
        };
        let svg = detection_svg(&d);
        assert_well_formed(&svg);
        assert_eq!(svg.matches("class=\"bar\"").count(), 1);
        assert!(svg.contains(">p50 1.50 s<"));
    }

    #[test]
    fn empty_detection_chart_says_so() {
        let d = DetectionFigures {
            samples_ms: vec![f64::NAN],
            ..DetectionFigures::default()
        };
        let svg = detection_svg(&d);
        assert_well_formed(&svg);
        assert!(svg.contains("0 samples"));
        assert!(svg.contains("no failure detection samples in this scenario"));
        assert!(!svg.contains("class=\"bar\""));
    }

    #[test]
    fn escape_covers_markup() {
        assert_eq!(
            escape("a<b & \"c\" > 'd'"),
            "a&lt;b &amp; &quot;c&quot; &gt; &apos;d&apos;"
        );
    }
}
