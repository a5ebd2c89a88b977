import ConvoyTensor
import Foundation

/// The element encodings Convoy reads and writes in a safetensors file.
///
/// Other safetensors dtypes (integers, F64, F8, BOOL) are refused when reading: Convoy's tensors hold only
/// Float32 and BFloat16.
public enum SafeTensorsStorageType: String, Sendable {
    /// IEEE-754 single precision, read into a float32 tensor.
    case f32 = "F32"
    /// Brain floating point, read into a bfloat16 tensor bit for bit.
    case bf16 = "BF16"
    /// IEEE-754 half precision, converted to float32 when read.
    case f16 = "F16"

    /// Bytes per element in the file.
    public var byteSize: Int {
        switch self {
        case .f32: return 4
        case .bf16, .f16: return 2
        }
    }
}

/// A set of named tensors with string metadata, in the safetensors format.
///
/// A safetensors file is an 8-byte little-endian header length `N`, `N` bytes of UTF-8 JSON describing each
/// tensor (`dtype`, `shape`, `data_offsets` relative to the data section) plus an optional `__metadata__`
/// object of strings, then the raw little-endian tensor data. The format holds no code, so loading an
/// untrusted file cannot execute anything; ``decode(_:path:)`` validates every size and offset before it
/// allocates or copies, so a hostile header cannot trigger huge allocations or out-of-bounds reads.
public struct SafeTensors: Sendable {
    /// The tensors by name. F32 entries load as float32 tensors, BF16 as bfloat16, F16 converted to float32.
    public var tensors: [String: Tensor]
    /// The `__metadata__` string map.
    public var metadata: [String: String]

    /// Headers larger than this are refused; real ones are kilobytes, and it bounds what a hostile file can
    /// make us parse.
    public static let maximumHeaderBytes = 100_000_000

    /// Creates a set from tensors and metadata.
    public init(tensors: [String: Tensor], metadata: [String: String] = [:]) {
        self.tensors = tensors
        self.metadata = metadata
    }

    // MARK: - Reading

    /// Reads and validates a safetensors file.
    ///
    /// - Throws: ``ConvoyError/io(_:)`` when the file cannot be read, ``ConvoyError/malformedFile(path:reason:)``
    ///   when its contents are not a valid safetensors file Convoy can load.
    public static func read(contentsOf path: String) throws -> SafeTensors {
        let bytes: Data
        do {
            bytes = try Data(contentsOf: URL(fileURLWithPath: path), options: [])  // read, not mapped: a file truncated meanwhile must not crash us
        } catch {
            throw ConvoyError.io("cannot read safetensors file \(path): \(error.localizedDescription)")
        }
        return try decode(bytes, path: path)
    }

    /// Parses and validates safetensors bytes; `path` only labels error messages.
    ///
    /// - Throws: ``ConvoyError/malformedFile(path:reason:)`` naming the problem (and the tensor, where there is one).
    public static func decode(_ bytes: Data, path: String = "<memory>") throws -> SafeTensors {
        try bytes.withUnsafeBytes { (buffer: UnsafeRawBufferPointer) in
            try decode(buffer, path: path)
        }
    }

    /// A validated header entry: where its bytes are and what to build from them.
    private struct Entry {
        var name: String
        var storage: SafeTensorsStorageType
        var shape: [Int]
        var count: Int
        var begin: Int
        var end: Int
    }

    private static func decode(_ buffer: UnsafeRawBufferPointer, path: String) throws -> SafeTensors {
        func malformed(_ reason: String) -> ConvoyError { .malformedFile(path: path, reason: reason) }

        let headerLength = try headerLength(prefix: buffer, fileLength: buffer.count, malformed: malformed)
        let headerBytes = UnsafeRawBufferPointer(rebasing: buffer[8..<(8 + headerLength)])
        let data = UnsafeRawBufferPointer(rebasing: buffer[(8 + headerLength)...])

        let (metadata, entries) = try parseHeader(headerBytes, dataLength: data.count, malformed: malformed)

        // Everything is validated: only now allocate and copy.
        var tensors: [String: Tensor] = [:]
        tensors.reserveCapacity(entries.count)
        for entry in entries {
            tensors[entry.name] = makeTensor(entry, source: data.baseAddress.map { $0 + entry.begin })
        }
        return SafeTensors(tensors: tensors, metadata: metadata)
    }

    /// Parses and validates a header's JSON (the bytes after the length prefix) for a data section of
    /// `dataLength` bytes: every entry's dtype, shape and offsets, and that no two tensors overlap.
    private static func parseHeader(_ headerBytes: UnsafeRawBufferPointer, dataLength: Int,
                                    malformed: (String) -> ConvoyError) throws -> (metadata: [String: String], entries: [Entry]) {
        guard String(validating: headerBytes, as: UTF8.self) != nil else {
            throw malformed("header is not valid UTF-8")
        }
        let json: Any
        do {
            json = try JSONSerialization.jsonObject(with: Data(headerBytes))
        } catch {
            throw malformed("header is not valid JSON (\(error.localizedDescription))")
        }
        guard let header = json as? [String: Any] else {
            throw malformed("header JSON is not an object")
        }

        var metadata: [String: String] = [:]
        var entries: [Entry] = []
        entries.reserveCapacity(header.count)
        for (name, value) in header {
            if name == "__metadata__" {
                guard let object = value as? [String: Any] else {
                    throw malformed("__metadata__ is not a JSON object")
                }
                for (key, item) in object {
                    guard let string = item as? String else {
                        throw malformed("__metadata__ value for key '\(key)' is not a string")
                    }
                    metadata[key] = string
                }
                continue
            }
            entries.append(try parseEntry(name: name, value: value, dataLength: dataLength, malformed: malformed))
        }

        // Offsets may come in any order; sorted by start, each non-empty tensor must begin at or after the
        // end of every earlier one.
        entries.sort { ($0.begin, $0.end, $0.name) < ($1.begin, $1.end, $1.name) }
        var previous: Entry?
        for entry in entries where entry.end > entry.begin {
            if let previous, entry.begin < previous.end {
                throw malformed("tensors '\(previous.name)' [\(previous.begin), \(previous.end)) and '\(entry.name)' [\(entry.begin), \(entry.end)) overlap in the data section")
            }
            previous = entry
        }

        return (metadata, entries)
    }

    /// Where one tensor's bytes are in a safetensors file, as its validated header says.
    public struct Location: Sendable {
        public var name: String
        public var storage: SafeTensorsStorageType
        public var shape: [Int]
        /// The tensor's bytes, as absolute offsets in the file.
        public var bytes: Range<Int>
    }

    /// Reads and validates only the header of the safetensors file at `path` (not its data): where each
    /// tensor is, so a caller can read just the parts it needs.
    ///
    /// - Throws: ``ConvoyError/io(_:)`` when the file cannot be read, ``ConvoyError/malformedFile(path:reason:)``
    ///   when its header is not valid (the same checks as ``read(contentsOf:)``).
    public static func locations(inFileAt path: String) throws -> [Location] {
        func malformed(_ reason: String) -> ConvoyError { .malformedFile(path: path, reason: reason) }
        guard let handle = FileHandle(forReadingAtPath: path) else { throw ConvoyError.io("cannot open safetensors file \(path)") }
        defer { try? handle.close() }
        let fileLength: Int
        let prefix: Data
        do {
            fileLength = Int(try handle.seekToEnd())
            try handle.seek(toOffset: 0)
            prefix = try handle.read(upToCount: 8) ?? Data()
        } catch {
            throw ConvoyError.io("cannot read safetensors file \(path): \(error.localizedDescription)")
        }
        let headerLength = try prefix.withUnsafeBytes { try Self.headerLength(prefix: $0, fileLength: fileLength, malformed: malformed) }
        let header: Data
        do { header = try handle.read(upToCount: headerLength) ?? Data() } catch {
            throw ConvoyError.io("cannot read safetensors file \(path): \(error.localizedDescription)")
        }
        guard header.count == headerLength else { throw malformed("the header is shorter than its declared \(headerLength) bytes") }
        let entries = try header.withUnsafeBytes { try parseHeader($0, dataLength: fileLength - 8 - headerLength, malformed: malformed).entries }
        let dataStart = 8 + headerLength
        return entries.map { Location(name: $0.name, storage: $0.storage, shape: $0.shape, bytes: (dataStart + $0.begin)..<(dataStart + $0.end)) }
    }

    /// The header length declared by the 8-byte little-endian prefix at the start of `prefix`, checked against
    /// the size limit and the file's length (what both the in-memory decode and the header-only read check).
    private static func headerLength(prefix: UnsafeRawBufferPointer, fileLength: Int, malformed: (String) -> ConvoyError) throws -> Int {
        guard prefix.count >= 8 else {
            throw malformed("file is \(prefix.count) bytes, shorter than the 8-byte header length prefix")
        }
        let declared = UInt64(littleEndian: prefix.loadUnaligned(fromByteOffset: 0, as: UInt64.self))
        guard declared <= UInt64(maximumHeaderBytes) else {
            throw malformed("huge header: declared header length \(declared) bytes exceeds the \(maximumHeaderBytes)-byte limit")
        }
        let headerLength = Int(declared)
        guard headerLength <= fileLength - 8 else {
            throw malformed("header length \(headerLength) runs past the end of the file (\(fileLength - 8) bytes after the length prefix)")
        }
        return headerLength
    }

    private static func parseEntry(
        name: String, value: Any, dataLength: Int, malformed: (String) -> ConvoyError
    ) throws -> Entry {
        guard let object = value as? [String: Any] else {
            throw malformed("entry for tensor '\(name)' is not a JSON object")
        }
        guard let dtypeValue = object["dtype"] else { throw malformed("tensor '\(name)' is missing 'dtype'") }
        guard let shapeValue = object["shape"] else { throw malformed("tensor '\(name)' is missing 'shape'") }
        guard let offsetsValue = object["data_offsets"] else {
            throw malformed("tensor '\(name)' is missing 'data_offsets'")
        }
        guard let dtypeName = dtypeValue as? String else {
            throw malformed("tensor '\(name)' has a 'dtype' that is not a string")
        }
        guard let storage = SafeTensorsStorageType(rawValue: dtypeName) else {
            let known = ["BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F64", "F8_E4M3", "F8_E5M2"]
            if known.contains(dtypeName) {
                throw malformed("tensor '\(name)' has dtype \(dtypeName), which Convoy does not support (only F32, BF16 and F16)")
            }
            throw malformed("tensor '\(name)' has unknown dtype '\(dtypeName)' (Convoy reads F32, BF16 and F16)")
        }
        guard let shapeItems = shapeValue as? [Any] else {
            throw malformed("tensor '\(name)' has a 'shape' that is not a JSON array")
        }
        var shape: [Int] = []
        shape.reserveCapacity(shapeItems.count)
        for item in shapeItems {
            guard let dimension = jsonInteger(item) else {
                throw malformed("tensor '\(name)' has a 'shape' entry \(item) that is not an integer")
            }
            guard dimension >= 0 else {
                throw malformed("tensor '\(name)' has negative dimension \(dimension) in shape \(shapeItems)")
            }
            shape.append(dimension)
        }
        guard let offsetItems = offsetsValue as? [Any], offsetItems.count == 2 else {
            throw malformed("tensor '\(name)' has 'data_offsets' that is not an array of two integers")
        }
        guard let begin = jsonInteger(offsetItems[0]), let end = jsonInteger(offsetItems[1]) else {
            throw malformed("tensor '\(name)' has 'data_offsets' that are not integers")
        }
        guard begin >= 0, end >= 0, begin <= dataLength, end <= dataLength else {
            throw malformed("tensor '\(name)' has data_offsets [\(begin), \(end)] out of range of the \(dataLength)-byte data section")
        }
        guard begin <= end else {
            throw malformed("tensor '\(name)' has data_offsets begin \(begin) > end \(end)")
        }
        // Overflow-checked: a hostile shape must not wrap around to a small, plausible size.
        var count = 1
        var byteLength = storage.byteSize
        var overflow = false
        for dimension in shape {
            let (nextCount, countOverflow) = count.multipliedReportingOverflow(by: dimension)
            let (nextBytes, bytesOverflow) = byteLength.multipliedReportingOverflow(by: dimension)
            count = nextCount
            byteLength = nextBytes
            overflow = overflow || countOverflow || bytesOverflow
        }
        guard !overflow, byteLength == end - begin else {
            let expected = overflow ? "more than \(Int.max)" : "\(byteLength)"
            throw malformed("tensor '\(name)' has byte length \(end - begin) but shape \(shape) of \(dtypeName) needs \(expected) bytes")
        }
        return Entry(name: name, storage: storage, shape: shape, count: count, begin: begin, end: end)
    }

    /// An integer from JSONSerialization output, or nil for booleans, fractions, exponent forms and values
    /// outside `Int`. (On Linux `NSNumber(1) is Bool` holds, so the Objective-C type code decides.)
    private static func jsonInteger(_ value: Any) -> Int? {
        guard let number = value as? NSNumber, !(number is NSDecimalNumber) else { return nil }
        switch String(cString: number.objCType) {
        case "s", "i", "l", "q":
            return Int(exactly: number.int64Value)
        case "S", "I", "L", "Q":
            let unsigned = number.uint64Value
            return unsigned <= UInt64(Int.max) ? Int(unsigned) : nil
        default:
            return nil  // "c" (bool), "d"/"f" (non-integer literals)
        }
    }

    private static var hostIsLittleEndian: Bool { 1.littleEndian == 1 }

    private static func makeTensor(_ entry: Entry, source: UnsafeRawPointer?) -> Tensor {
        let dtype: DType = entry.storage == .bf16 ? .bfloat16 : .float32
        let tensor = Tensor(uninitializedShape: entry.shape, dtype: dtype)
        guard entry.count > 0, let source else { return tensor }
        let destination = tensor.storage.pointer
        switch entry.storage {
        case .f32, .bf16:
            if hostIsLittleEndian {
                destination.copyMemory(from: source, byteCount: entry.end - entry.begin)
            } else if entry.storage == .f32 {
                let output = destination.assumingMemoryBound(to: UInt32.self)
                for i in 0..<entry.count {
                    output[i] = UInt32(littleEndian: source.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))
                }
            } else {
                let output = destination.assumingMemoryBound(to: UInt16.self)
                for i in 0..<entry.count {
                    output[i] = UInt16(littleEndian: source.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
                }
            }
        case .f16:
            let output = destination.assumingMemoryBound(to: Float.self)
            for i in 0..<entry.count {
                let bits = UInt16(littleEndian: source.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
                output[i] = Float16Bits.toFloat(bits)
            }
        }
        return tensor
    }

    // MARK: - Writing

    /// Serialises tensors sorted by name; float32 tensors are written as F32 unless `float32As` says .f16 or
    /// .bf16; bfloat16 tensors as BF16.
    ///
    /// Header keys are sorted with `__metadata__` first (omitted when empty); the header is padded with
    /// spaces so the data section starts at a multiple of 8 bytes; tensor data follows in name order with no gaps.
    public func encode(float32As: SafeTensorsStorageType = .f32) -> Data {
        let names = tensors.keys.sorted()
        let storages = names.map { tensors[$0]!.dtype == .bfloat16 ? SafeTensorsStorageType.bf16 : float32As }
        let header = Self.header(for: zip(names, storages).map { (name: $0, storage: $1, shape: tensors[$0]!.shape) }, metadata: metadata)
        let dataLength = header.dataRanges.last?.upperBound ?? 0

        var output = Data(count: header.bytes.count + dataLength)
        output.withUnsafeMutableBytes { (raw: UnsafeMutableRawBufferPointer) in
            let base = raw.baseAddress!
            header.bytes.withUnsafeBytes { base.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            let dataStart = base + header.bytes.count
            for (index, name) in names.enumerated() {
                Self.writeElements(of: tensors[name]!, as: storages[index], to: dataStart + header.dataRanges[index].lowerBound)
            }
        }
        return output
    }

    /// The start of a file holding `entries` in the given order, packed with no gaps: the 8-byte length, the
    /// JSON header (`__metadata__` first, omitted when empty) padded with spaces so the data section starts at
    /// a multiple of 8 bytes; and each entry's byte range relative to the data section.
    public static func header(for entries: [(name: String, storage: SafeTensorsStorageType, shape: [Int])], metadata: [String: String]) -> (bytes: [UInt8], dataRanges: [Range<Int>]) {
        var ranges: [Range<Int>] = []
        ranges.reserveCapacity(entries.count)
        var dataLength = 0
        for entry in entries {
            let length = entry.shape.reduce(1, *) * entry.storage.byteSize
            ranges.append(dataLength..<(dataLength + length))
            dataLength += length
        }
        var header = "{"
        var separator = ""
        if !metadata.isEmpty {
            let pairs = metadata.keys.sorted().map { "\(jsonString($0)):\(jsonString(metadata[$0]!))" }
            header += "\"__metadata__\":{\(pairs.joined(separator: ","))}"
            separator = ","
        }
        for (entry, range) in zip(entries, ranges) {
            let shape = entry.shape.map(String.init).joined(separator: ",")
            header += "\(separator)\(jsonString(entry.name)):{\"dtype\":\"\(entry.storage.rawValue)\",\"shape\":[\(shape)],\"data_offsets\":[\(range.lowerBound),\(range.upperBound)]}"
            separator = ","
        }
        header += "}"
        var headerBytes = Array(header.utf8)
        // Pad so 8 + header length is a multiple of 8: the data section, and so every F32 tensor, stays aligned.
        headerBytes.append(contentsOf: repeatElement(UInt8(ascii: " "), count: (8 - headerBytes.count % 8) % 8))
        var bytes = [UInt8](repeating: 0, count: 8)
        withUnsafeBytes(of: UInt64(headerBytes.count).littleEndian) { for i in 0..<8 { bytes[i] = $0[i] } }
        return (bytes + headerBytes, ranges)
    }

    /// Writes one tensor's elements, little-endian, in row-major order.
    private static func writeElements(of tensor: Tensor, as storage: SafeTensorsStorageType, to destination: UnsafeMutableRawPointer) {
        let count = tensor.count
        guard count > 0 else { return }
        // `contiguous()` yields float32; converting a bfloat16 tensor to float32 and back is exact.
        let source: Tensor
        if tensor.isContiguous {
            source = tensor
        } else {
            source = tensor.converted(to: .float32).contiguous()
        }
        let start = source.storage.pointer + source.offset * source.dtype.byteSize
        switch (source.dtype, storage) {
        case (.float32, .f32):
            if hostIsLittleEndian {
                destination.copyMemory(from: start, byteCount: count * 4)
            } else {
                let input = start.assumingMemoryBound(to: UInt32.self)
                for i in 0..<count { destination.storeBytes(of: input[i].littleEndian, toByteOffset: 4 * i, as: UInt32.self) }
            }
        case (.bfloat16, _):
            if hostIsLittleEndian {
                destination.copyMemory(from: start, byteCount: count * 2)
            } else {
                let input = start.assumingMemoryBound(to: UInt16.self)
                for i in 0..<count { destination.storeBytes(of: input[i].littleEndian, toByteOffset: 2 * i, as: UInt16.self) }
            }
        case (.float32, .bf16):
            let input = start.assumingMemoryBound(to: Float.self)
            for i in 0..<count {
                destination.storeBytes(of: BFloat16(input[i]).bitPattern.littleEndian, toByteOffset: 2 * i, as: UInt16.self)
            }
        case (.float32, .f16):
            let input = start.assumingMemoryBound(to: Float.self)
            for i in 0..<count {
                destination.storeBytes(of: Float16Bits.fromFloat(input[i]).littleEndian, toByteOffset: 2 * i, as: UInt16.self)
            }
        }
    }

    /// A JSON string literal for `text`.
    private static func jsonString(_ text: String) -> String {
        var result = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": result += "\\\""
            case "\\": result += "\\\\"
            case "\n": result += "\\n"
            case "\r": result += "\\r"
            case "\t": result += "\\t"
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    result += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    result.unicodeScalars.append(scalar)
                }
            }
        }
        return result + "\""
    }

    /// Writes atomically: to a temporary file in the same directory, fsync, rename over `path`, fsync the
    /// directory. On any failure the old file at `path` is untouched and the temp file removed.
    ///
    /// - Throws: ``ConvoyError/io(_:)`` naming the step that failed.
    public func write(to path: String, float32As: SafeTensorsStorageType = .f32) throws {
        try AtomicFile.write(encode(float32As: float32As), to: path)
    }
}
