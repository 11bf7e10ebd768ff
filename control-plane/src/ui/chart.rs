//! SVG charts drawn by the plane: time series as lines (one per series, a dot with a tooltip per point), counts as
//! bars (the logs' histogram), with axes, units, a legend, and deploy markers (a band from start to end of each
//! deployment, coloured by outcome). Rendered through askama templates, so every label is escaped; geometry is
//! computed here. Colours come from classes in `app.css` (no inline style: the CSP forbids it).

use askama::Template;

/// What the values of a chart measure, for the axis labels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unit {
    /// Requests per second.
    PerSecond,
    /// A ratio 0-1, shown in percent.
    Ratio,
    /// Milliseconds.
    Millis,
    /// A plain count.
    Count,
    /// A metric's value, in its own unit.
    Value,
}

impl Unit {
    /// The unit's label.
    pub fn label(self) -> &'static str {
        match self {
            Unit::PerSecond => "req/s",
            Unit::Ratio => "%",
            Unit::Millis => "ms",
            Unit::Count => "count",
            Unit::Value => "",
        }
    }

    /// A value in this unit, for ticks and tooltips.
    pub fn format(self, value: f64) -> String {
        match self {
            Unit::Ratio => format!("{}%", super::format::number(value * 100.0)),
            Unit::Millis => super::format::millis(value),
            Unit::PerSecond => format!("{}/s", super::format::number(value)),
            Unit::Count | Unit::Value => super::format::number(value),
        }
    }
}

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Its legend.
    pub label: String,
    /// (ms since the epoch, value), oldest first.
    pub points: Vec<(i64, f64)>,
    /// Drawn emphasised (a canary among stable versions).
    pub emphasis: bool,
}

/// A deployment on a time chart.
#[derive(Debug, Clone)]
pub struct Marker {
    /// Start, ms since the epoch.
    pub start_ms: i64,
    /// End (now for a running one), ms since the epoch.
    pub end_ms: i64,
    /// `running`, `succeeded`, `rolled_back_by_judge`, `rolled_back_for_health` or `aborted`.
    pub outcome: String,
    /// The tooltip.
    pub title: String,
}

/// A line's geometry.
#[derive(Debug, Clone)]
pub struct Line {
    /// Legend.
    pub label: String,
    /// Palette index (class `s0`..`s7`).
    pub color: usize,
    /// Thicker.
    pub emphasis: bool,
    /// The SVG path.
    pub d: String,
    /// Points with tooltips: (x, y, title).
    pub dots: Vec<(f64, f64, String)>,
}

/// A bar's geometry: x, y, width, height, tooltip.
pub type Bar = (f64, f64, f64, f64, String);

/// An axis tick: position and label.
pub type Tick = (f64, String);

/// A band: x, width, outcome class, tooltip.
pub type Band = (f64, f64, String, String);

/// A chart, ready to render.
#[derive(Debug, Clone, Template)]
#[template(path = "chart.html")]
pub struct Chart {
    /// Title.
    pub title: String,
    /// Unit label.
    pub unit: &'static str,
    /// Canvas size.
    pub width: f64,
    /// See `width`.
    pub height: f64,
    /// The plot area's left edge.
    pub left: f64,
    /// The plot area's top edge.
    pub top: f64,
    /// The plot area's width.
    pub plot_width: f64,
    /// The plot area's height.
    pub plot_height: f64,
    /// The range, ms (for the drag-to-zoom script).
    pub from_ms: i64,
    /// See `from_ms`.
    pub to_ms: i64,
    /// Whether dragging zooms (the page reloads with the dragged range).
    pub zoomable: bool,
    /// Lines.
    pub lines: Vec<Line>,
    /// Bars.
    pub bars: Vec<Bar>,
    /// Y ticks.
    pub y_ticks: Vec<Tick>,
    /// X ticks.
    pub x_ticks: Vec<Tick>,
    /// Deploy markers.
    pub bands: Vec<Band>,
    /// Points that link somewhere (a scatter of traces): x, y, href, tooltip, failed.
    pub links: Vec<(f64, f64, String, String, bool)>,
    /// Nothing to draw.
    pub empty: bool,
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 200.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 24.0;

/// A "nice" step (1, 2 or 5 times a power of ten) giving about `ticks` ticks up to `max`.
fn nice_step(max: f64, ticks: f64) -> f64 {
    let raw = (max / ticks).max(f64::MIN_POSITIVE);
    let power = 10f64.powf(raw.log10().floor());
    let fraction = raw / power;
    let nice = if fraction <= 1.0 {
        1.0
    } else if fraction <= 2.0 {
        2.0
    } else if fraction <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * power
}

/// Time ticks at a round step giving about six ticks over the range.
fn time_ticks(from_ms: i64, to_ms: i64, x: impl Fn(i64) -> f64) -> Vec<Tick> {
    const STEPS_MS: [i64; 12] = [
        1_000, 5_000, 15_000, 60_000, 300_000, 900_000, 1_800_000, 3_600_000, 10_800_000,
        21_600_000, 43_200_000, 86_400_000,
    ];
    let span = (to_ms - from_ms).max(1);
    let step = STEPS_MS
        .into_iter()
        .find(|step| span / step <= 7)
        .unwrap_or(span / 6 / 86_400_000 * 86_400_000 + 86_400_000);
    let long = span > 2 * 86_400_000;
    let mut ticks = Vec::new();
    let mut t = (from_ms / step + 1) * step;
    while t < to_ms {
        let label = chrono::DateTime::from_timestamp_millis(t)
            .map(|time| {
                time.format(if long {
                    "%m-%d %H:%M"
                } else if step < 60_000 {
                    "%H:%M:%S"
                } else {
                    "%H:%M"
                })
                .to_string()
            })
            .unwrap_or_default();
        ticks.push((x(t), label));
        t += step;
    }
    ticks
}

fn frame(title: &str, unit: Unit, from_ms: i64, to_ms: i64) -> Chart {
    sized(title, unit, from_ms, to_ms, WIDTH, HEIGHT)
}

/// A chart frame of `width` × `height` (the SVG's own units: it scales to its box).
fn sized(title: &str, unit: Unit, from_ms: i64, to_ms: i64, width: f64, height: f64) -> Chart {
    Chart {
        title: title.to_owned(),
        unit: unit.label(),
        width,
        height,
        left: LEFT,
        top: TOP,
        plot_width: width - LEFT - RIGHT,
        plot_height: height - TOP - BOTTOM,
        from_ms,
        to_ms,
        zoomable: false,
        lines: Vec::new(),
        bars: Vec::new(),
        y_ticks: Vec::new(),
        x_ticks: Vec::new(),
        bands: Vec::new(),
        links: Vec::new(),
        empty: true,
    }
}

impl Chart {
    fn x(&self, ms: i64) -> f64 {
        let span = (self.to_ms - self.from_ms).max(1) as f64;
        self.left + (ms - self.from_ms) as f64 / span * self.plot_width
    }

    fn scale_y(&mut self, max: f64, unit: Unit) -> f64 {
        let step = nice_step(if max > 0.0 { max } else { 1.0 }, 4.0);
        let top = (max / step).ceil().max(1.0) * step;
        let mut value = 0.0;
        while value <= top + step / 2.0 {
            let y = self.top + self.plot_height - value / top * self.plot_height;
            self.y_ticks.push((y, unit.format(value)));
            value += step;
        }
        top
    }

    fn place_bands(&mut self, markers: &[Marker]) {
        let bands: Vec<Band> = markers
            .iter()
            .filter(|m| m.end_ms >= self.from_ms && m.start_ms <= self.to_ms)
            .map(|m| {
                let x0 = self.x(m.start_ms.max(self.from_ms));
                let x1 = self.x(m.end_ms.min(self.to_ms));
                (x0, (x1 - x0).max(2.0), m.outcome.clone(), m.title.clone())
            })
            .collect();
        self.bands = bands;
        let ticks = time_ticks(self.from_ms, self.to_ms, |t| self.x(t));
        self.x_ticks = ticks;
    }

    /// A line chart of `series` over `from_ms..to_ms`, with deploy `markers`.
    pub fn lines(
        title: &str,
        unit: Unit,
        from_ms: i64,
        to_ms: i64,
        series: &[Series],
        markers: &[Marker],
    ) -> Chart {
        let mut chart = frame(title, unit, from_ms, to_ms);
        let max = series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        let top = chart.scale_y(max, unit);
        chart.place_bands(markers);
        let bottom = chart.top + chart.plot_height;
        for (index, s) in series.iter().enumerate() {
            let mut d = String::new();
            let mut dots = Vec::new();
            for &(ms, value) in &s.points {
                let value = if value.is_finite() { value } else { 0.0 };
                let (x, y) = (chart.x(ms), bottom - value / top * chart.plot_height);
                d.push_str(&format!(
                    "{}{x:.1},{y:.1}",
                    if d.is_empty() { "M" } else { " L" }
                ));
                dots.push((
                    x,
                    y,
                    format!(
                        "{} · {} · {}",
                        s.label,
                        super::format::clock_ms(ms),
                        unit.format(value)
                    ),
                ));
            }
            chart.empty &= s.points.is_empty();
            chart.lines.push(Line {
                label: s.label.clone(),
                color: index % 8,
                emphasis: s.emphasis,
                d,
                dots,
            });
        }
        chart
    }

    /// A bar chart of counts per bucket (start ms, count), each bucket `step_ms` wide; drag to zoom.
    pub fn bars(
        title: &str,
        from_ms: i64,
        to_ms: i64,
        step_ms: i64,
        buckets: &[(i64, u64)],
    ) -> Chart {
        // Full width on its page: wide and low.
        let mut chart = sized(title, Unit::Count, from_ms, to_ms, 1280.0, 150.0);
        chart.zoomable = true;
        let max = buckets.iter().map(|b| b.1).max().unwrap_or(0) as f64;
        let top = chart.scale_y(max, Unit::Count);
        chart.place_bands(&[]);
        let bottom = chart.top + chart.plot_height;
        let width =
            (step_ms as f64 / (to_ms - from_ms).max(1) as f64 * chart.plot_width - 1.0).max(1.0);
        for &(start, count) in buckets {
            let height = count as f64 / top * chart.plot_height;
            chart.bars.push((
                chart.x(start),
                bottom - height,
                width,
                height,
                format!("{} · {count}", super::format::clock_ms(start)),
            ));
        }
        chart.empty = max == 0.0;
        chart
    }
}

impl Chart {
    /// A scatter of items over time: (start ms, value, link, tooltip, failed); failed ones are drawn apart.
    pub fn scatter(
        title: &str,
        unit: Unit,
        from_ms: i64,
        to_ms: i64,
        items: &[(i64, f64, String, String, bool)],
    ) -> Chart {
        let mut chart = sized(title, unit, from_ms, to_ms, 1280.0, 180.0);
        let max = items
            .iter()
            .map(|i| i.1)
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        let top = chart.scale_y(max, unit);
        chart.place_bands(&[]);
        let bottom = chart.top + chart.plot_height;
        for (ms, value, href, title, failed) in items {
            let value = if value.is_finite() { *value } else { 0.0 };
            chart.links.push((
                chart.x(*ms),
                bottom - value / top * chart.plot_height,
                href.clone(),
                title.clone(),
                *failed,
            ));
        }
        chart.empty = items.is_empty();
        chart
    }
}

/// A sparkline: one series, no axes, deploy bands behind it.
#[derive(Debug, Clone, Template)]
#[template(path = "sparkline.html")]
pub struct Sparkline {
    /// The path.
    pub d: String,
    /// Bands: x, width, outcome class, tooltip.
    pub bands: Vec<Band>,
    /// Tooltip.
    pub title: String,
}

impl Sparkline {
    /// `values` spread over 120×24, scaled to their own maximum, with `markers` over `from_ms..to_ms`.
    pub fn new(
        values: &[f64],
        title: String,
        from_ms: i64,
        to_ms: i64,
        markers: &[Marker],
    ) -> Sparkline {
        let (width, height) = (120.0, 24.0);
        let max = values
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        let step = width / (values.len().max(2) - 1) as f64;
        let mut d = String::new();
        for (i, value) in values.iter().enumerate() {
            let y = height
                - 1.0
                - if max > 0.0 {
                    value / max * (height - 2.0)
                } else {
                    0.0
                };
            d.push_str(&format!(
                "{}{:.1},{y:.1}",
                if i == 0 { "M" } else { " L" },
                i as f64 * step
            ));
        }
        let span = (to_ms - from_ms).max(1) as f64;
        let bands = markers
            .iter()
            .filter(|m| m.end_ms >= from_ms && m.start_ms <= to_ms)
            .map(|m| {
                let x0 = (m.start_ms.max(from_ms) - from_ms) as f64 / span * width;
                let x1 = (m.end_ms.min(to_ms) - from_ms) as f64 / span * width;
                (x0, (x1 - x0).max(1.5), m.outcome.clone(), m.title.clone())
            })
            .collect();
        Sparkline { d, bands, title }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round_and_cover_the_maximum() {
        assert_eq!(nice_step(100.0, 4.0), 50.0);
        assert_eq!(nice_step(7.0, 4.0), 2.0);
        assert_eq!(nice_step(0.03, 4.0), 0.01);
        let chart = Chart::lines(
            "r",
            Unit::Count,
            0,
            3_600_000,
            &[Series {
                label: "a".into(),
                points: vec![(0, 0.0), (1_800_000, 93.0)],
                emphasis: false,
            }],
            &[],
        );
        let last = chart.y_ticks.last().unwrap();
        assert_eq!(last.1, "100");
        assert!(
            chart.x_ticks.len() >= 3 && chart.x_ticks.len() <= 8,
            "{:?}",
            chart.x_ticks
        );
    }

    #[test]
    fn labels_are_escaped_in_the_svg() {
        let chart = Chart::lines(
            "<script>alert(1)</script>",
            Unit::Count,
            0,
            60_000,
            &[Series {
                label: "<img src=x onerror=alert(1)>".into(),
                points: vec![(0, 1.0)],
                emphasis: false,
            }],
            &[Marker {
                start_ms: 0,
                end_ms: 30_000,
                outcome: "succeeded".into(),
                title: "\"><script>".into(),
            }],
        );
        let svg = chart.render().unwrap();
        assert!(!svg.contains("<script>") && !svg.contains("<img"), "{svg}");
        assert!(svg.contains("&#60;script&#62;"), "{svg}");
    }
}
