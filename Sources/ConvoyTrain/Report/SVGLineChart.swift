import Foundation

/// A line chart drawn as inline SVG: one path per series, axes with round-numbered ticks, a legend. Points that
/// are not finite are left out (a skipped step's loss, say).
public struct SVGLineChart {
    /// One line of the chart.
    public struct Series {
        public var name: String
        public var color: String
        public var points: [(x: Double, y: Double)]

        public init(name: String, color: String, points: [(x: Double, y: Double)]) {
            self.name = name
            self.color = color
            self.points = points.filter { $0.x.isFinite && $0.y.isFinite }
        }
    }

    public var title: String
    public var xLabel: String
    public var series: [Series]
    public var width = 640.0
    public var height = 260.0

    public init(title: String, xLabel: String = "step", series: [Series]) {
        self.title = title
        self.xLabel = xLabel
        self.series = series.filter { !$0.points.isEmpty }
    }

    /// Whether there is anything to draw.
    public var isEmpty: Bool { series.isEmpty }

    private static let margin = (left: 64.0, right: 16.0, top: 28.0, bottom: 40.0)

    /// The chart as an `<svg>` element (XML-well-formed, so it also parses as XHTML).
    public func svg() -> String {
        let points = series.flatMap(\.points)
        let (x0, x1) = Self.range(points.map(\.x)), (y0, y1) = Self.range(points.map(\.y))
        let xTicks = Self.ticks(x0, x1), yTicks = Self.ticks(y0, y1)
        let xLow = min(x0, xTicks.first ?? x0), xHigh = max(x1, xTicks.last ?? x1)
        let yLow = min(y0, yTicks.first ?? y0), yHigh = max(y1, yTicks.last ?? y1)
        let m = Self.margin
        let plotWidth = width - m.left - m.right, plotHeight = height - m.top - m.bottom
        func px(_ x: Double) -> Double { m.left + (x - xLow) / max(xHigh - xLow, .leastNonzeroMagnitude) * plotWidth }
        func py(_ y: Double) -> Double { m.top + plotHeight - (y - yLow) / max(yHigh - yLow, .leastNonzeroMagnitude) * plotHeight }
        func c(_ value: Double) -> String { String(format: "%.1f", value) }

        var svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" width=\"\(Int(width))\" height=\"\(Int(height))\" viewBox=\"0 0 \(Int(width)) \(Int(height))\" role=\"img\">"
        svg += "<title>\(HTMLText.escaped(title))</title>"
        svg += "<text class=\"chart-title\" x=\"\(c(m.left))\" y=\"18\">\(HTMLText.escaped(title))</text>"
        svg += "<rect class=\"plot\" x=\"\(c(m.left))\" y=\"\(c(m.top))\" width=\"\(c(plotWidth))\" height=\"\(c(plotHeight))\"/>"
        for tick in yTicks {
            svg += "<line class=\"grid\" x1=\"\(c(m.left))\" x2=\"\(c(m.left + plotWidth))\" y1=\"\(c(py(tick)))\" y2=\"\(c(py(tick)))\"/>"
            svg += "<text class=\"tick\" x=\"\(c(m.left - 6))\" y=\"\(c(py(tick) + 4))\" text-anchor=\"end\">\(Self.label(tick))</text>"
        }
        for tick in xTicks {
            svg += "<line class=\"grid\" x1=\"\(c(px(tick)))\" x2=\"\(c(px(tick)))\" y1=\"\(c(m.top))\" y2=\"\(c(m.top + plotHeight))\"/>"
            svg += "<text class=\"tick\" x=\"\(c(px(tick)))\" y=\"\(c(m.top + plotHeight + 16))\" text-anchor=\"middle\">\(Self.label(tick))</text>"
        }
        svg += "<text class=\"axis-label\" x=\"\(c(m.left + plotWidth / 2))\" y=\"\(c(height - 6))\" text-anchor=\"middle\">\(HTMLText.escaped(xLabel))</text>"
        for (index, line) in series.enumerated() {
            let path = line.points.enumerated().map { ($0.offset == 0 ? "M" : "L") + c(px($0.element.x)) + "," + c(py($0.element.y)) }.joined(separator: " ")
            svg += "<path class=\"series\" data-series=\"\(HTMLText.escaped(line.name))\" data-points=\"\(line.points.count)\" fill=\"none\" stroke=\"\(line.color)\" stroke-width=\"1.8\" d=\"\(path)\"/>"
            // A series of a few points (validation every N steps) is hard to see as a line alone.
            if line.points.count <= 40 {
                for point in line.points {
                    svg += "<circle cx=\"\(c(px(point.x)))\" cy=\"\(c(py(point.y)))\" r=\"2.5\" fill=\"\(line.color)\"/>"
                }
            }
            let legendX = m.left + plotWidth - 150, legendY = m.top + 14 + Double(index) * 16
            svg += "<line x1=\"\(c(legendX))\" x2=\"\(c(legendX + 18))\" y1=\"\(c(legendY - 4))\" y2=\"\(c(legendY - 4))\" stroke=\"\(line.color)\" stroke-width=\"3\"/>"
            svg += "<text class=\"legend\" x=\"\(c(legendX + 24))\" y=\"\(c(legendY))\">\(HTMLText.escaped(line.name))</text>"
        }
        return svg + "</svg>"
    }

    /// The data range, widened when it is a single value so the scale has a width.
    static func range(_ values: [Double]) -> (Double, Double) {
        guard let low = values.min(), let high = values.max() else { return (0, 1) }
        if high > low { return (low, high) }
        let pad = low == 0 ? 1 : abs(low) * 0.1
        return (low - pad, high + pad)
    }

    /// About five round values (1, 2 or 5 × 10ⁿ apart) covering `low...high`.
    static func ticks(_ low: Double, _ high: Double) -> [Double] {
        let raw = (high - low) / 5
        guard raw > 0, raw.isFinite else { return [low] }
        let magnitude = pow(10, floor(log10(raw)))
        let step = [1.0, 2, 5, 10].map { $0 * magnitude }.first { $0 >= raw } ?? 10 * magnitude
        let first = floor(low / step) * step
        var ticks: [Double] = []
        var value = first
        while value <= high + step * 0.5 && ticks.count < 12 {
            ticks.append(value)
            value += step
        }
        return ticks
    }

    /// A tick label: short, without trailing zeros.
    static func label(_ value: Double) -> String {
        if value != 0 && (abs(value) >= 1e5 || abs(value) < 1e-3) { return String(format: "%.1e", value) }
        return String(format: "%g", (value * 1e6).rounded() / 1e6)
    }
}
