//! The CED curve as a PNG (plotters). Text needs a TrueType font: `PIPNET_FONT`, else the
//! DejaVu Sans that Debian-based systems ship.

use std::path::Path;

use plotters::prelude::*;

/// Draws `curves` (label, points of (NME threshold, share of faces)) up to `max_error`.
pub fn ced_png(
    path: &Path,
    title: &str,
    curves: &[(String, Vec<(f32, f32)>)],
    max_error: f32,
) -> anyhow::Result<()> {
    pipnet_infer::preview::ensure_font()
        .map_err(|e| anyhow::anyhow!("the plot needs a font: {e}"))?;
    let root = BitMapBackend::new(path, (800, 600)).into_drawing_area();
    let draw = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("drawing {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(draw)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d(0f32..max_error, 0f32..1f32)
        .map_err(draw)?;
    chart
        .configure_mesh()
        .x_desc("NME (inter-ocular)")
        .y_desc("share of faces")
        .draw()
        .map_err(draw)?;
    for (i, (label, points)) in curves.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                colour.stroke_width(2),
            ))
            .map_err(draw)?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(draw)?;
    root.present().map_err(draw)?;
    Ok(())
}
