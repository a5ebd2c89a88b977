import ConvoyTensor

/// A TensorBoard `Event` protocol buffer, the fields Convoy writes and reads: the wall time, the step, the
/// file version (first event of a file) and a summary of scalar values.
///
/// Field numbers follow TensorBoard's `event.proto` and `summary.proto`: Event { wall_time = 1 (double),
/// step = 2 (int64), file_version = 3 (string), summary = 5 }, Summary { value = 1 (repeated) },
/// Summary.Value { tag = 1, simple_value = 2 (float) }.
public struct TensorBoardEvent: Equatable, Sendable {
    /// One scalar of a summary.
    public struct Scalar: Equatable, Sendable {
        public var tag: String
        public var value: Float
        public init(tag: String, value: Float) {
            self.tag = tag
            self.value = value
        }
    }

    /// Seconds since 1970.
    public var wallTime: Double
    public var step: Int64
    /// `brain.Event:2` in the first event of a file; nil otherwise.
    public var fileVersion: String?
    public var scalars: [Scalar]

    /// The version the first event of every file carries.
    public static let currentFileVersion = "brain.Event:2"

    public init(wallTime: Double, step: Int64 = 0, fileVersion: String? = nil, scalars: [Scalar] = []) {
        self.wallTime = wallTime
        self.step = step
        self.fileVersion = fileVersion
        self.scalars = scalars
    }

    /// The protocol-buffer encoding.
    public func encoded() -> [UInt8] {
        var event = ProtobufWriter()
        event.double(1, wallTime)
        if step != 0 { event.int64(2, step) }
        if let fileVersion { event.string(3, fileVersion) }
        if !scalars.isEmpty {
            var summary = ProtobufWriter()
            for scalar in scalars {
                var value = ProtobufWriter()
                value.string(1, scalar.tag)
                value.float(2, scalar.value)
                summary.lengthDelimited(1, value.bytes)
            }
            event.lengthDelimited(5, summary.bytes)
        }
        return event.bytes
    }

    /// Decodes an `Event`; fields and summary values other than scalars (images, histograms, tensors, graphs)
    /// are skipped.
    ///
    /// - Throws: ``ProtobufReader/Malformed`` when the bytes are not a well-formed message.
    public init(decoding bytes: [UInt8]) throws {
        self.init(wallTime: 0)
        var reader = ProtobufReader(bytes[...])
        while let (field, value) = try reader.next() {
            switch (field, value) {
            case (1, .fixed64(let bits)): wallTime = Double(bitPattern: bits)
            case (2, .varint(let raw)): step = Int64(bitPattern: raw)
            case (3, .lengthDelimited(let text)): fileVersion = String(decoding: text, as: UTF8.self)
            case (5, .lengthDelimited(let summary)): scalars += try Self.scalars(inSummary: summary)
            default: continue
            }
        }
    }

    private static func scalars(inSummary bytes: ArraySlice<UInt8>) throws -> [Scalar] {
        var result: [Scalar] = []
        var summary = ProtobufReader(bytes)
        while let (field, value) = try summary.next() {
            guard field == 1, case .lengthDelimited(let valueBytes) = value else { continue }
            var tag = "", number: Float?
            var entry = ProtobufReader(valueBytes)
            while let (valueField, item) = try entry.next() {
                switch (valueField, item) {
                case (1, .lengthDelimited(let text)): tag = String(decoding: text, as: UTF8.self)
                case (2, .fixed32(let bits)): number = Float(bitPattern: bits)
                default: continue
                }
            }
            if let number { result.append(Scalar(tag: tag, value: number)) }
        }
        return result
    }
}
