import ConvoyTensor

/// TFRecord framing, the container of TensorBoard event files: each record is its length (uint64, little
/// endian), the masked CRC-32C of those 8 bytes, the data, and the masked CRC-32C of the data.
public enum TFRecord {
    /// `data` framed as one record.
    public static func frame(_ data: [UInt8]) -> [UInt8] {
        var record: [UInt8] = []
        record.reserveCapacity(data.count + 16)
        let length = withUnsafeBytes(of: UInt64(data.count).littleEndian) { Array($0) }
        record += length
        withUnsafeBytes(of: CRC32C.masked(length).littleEndian) { record += $0 }
        record += data
        withUnsafeBytes(of: CRC32C.masked(data).littleEndian) { record += $0 }
        return record
    }

    /// The records of a TFRecord file, each checked against both of its CRCs.
    ///
    /// - Throws: ``ConvoyError/malformedFile(path:reason:)`` naming the record and offset when a CRC does not
    ///   match or the file ends inside a record.
    public static func records(in bytes: [UInt8], path: String) throws -> [[UInt8]] {
        var records: [[UInt8]] = []
        var offset = 0
        func word<T: FixedWidthInteger>(_ type: T.Type, at position: Int) -> T {
            var value: T = 0
            for index in 0..<MemoryLayout<T>.size { value |= T(bytes[position + index]) << (8 * index) }
            return value
        }
        while offset < bytes.count {
            let index = records.count
            guard bytes.count - offset >= 12 else {
                throw ConvoyError.malformedFile(path: path, reason: "record \(index) at byte \(offset) is truncated: its 12-byte header is cut off")
            }
            let length = word(UInt64.self, at: offset)
            guard word(UInt32.self, at: offset + 8) == CRC32C.masked(Array(bytes[offset..<(offset + 8)])) else {
                throw ConvoyError.malformedFile(path: path, reason: "record \(index) at byte \(offset): the CRC of its length does not match (corrupt file)")
            }
            guard length <= UInt64(bytes.count - offset - 12), bytes.count - offset - 12 - Int(length) >= 4 else {
                throw ConvoyError.malformedFile(path: path, reason: "record \(index) at byte \(offset) is truncated: it holds \(length) bytes, the file ends \(bytes.count - offset - 12) bytes later")
            }
            let start = offset + 12, end = start + Int(length)
            let data = Array(bytes[start..<end])
            guard word(UInt32.self, at: end) == CRC32C.masked(data) else {
                throw ConvoyError.malformedFile(path: path, reason: "record \(index) at byte \(offset): the CRC of its \(length) data bytes does not match (corrupt file)")
            }
            records.append(data)
            offset = end + 4
        }
        return records
    }
}
