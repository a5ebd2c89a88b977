/// Decodes protocol-buffer fields one at a time from a message's bytes; unknown fields are returned like any
/// other, so callers skip what they do not read.
struct ProtobufReader {
    /// One field's value, by wire type.
    enum Value {
        case varint(UInt64)
        case fixed64(UInt64)
        case lengthDelimited(ArraySlice<UInt8>)
        case fixed32(UInt32)
    }

    /// Why a message could not be decoded.
    struct Malformed: Error, CustomStringConvertible {
        let description: String
    }

    private let bytes: ArraySlice<UInt8>
    private var position: Int

    init(_ bytes: ArraySlice<UInt8>) {
        self.bytes = bytes
        position = bytes.startIndex
    }

    /// The next field (number and value), or nil at the end of the message.
    mutating func next() throws -> (field: Int, value: Value)? {
        guard position < bytes.endIndex else { return nil }
        let key = try varint()
        let field = Int(key >> 3)
        guard field > 0 else { throw Malformed(description: "field number 0 at byte \(position - bytes.startIndex)") }
        switch key & 7 {
        case 0: return (field, .varint(try varint()))
        case 1: return (field, .fixed64(try littleEndian(8)))
        case 2:
            let length = try varint()
            guard length <= UInt64(bytes.endIndex - position) else {
                throw Malformed(description: "field \(field) claims \(length) bytes, \(bytes.endIndex - position) remain")
            }
            defer { position += Int(length) }
            return (field, .lengthDelimited(bytes[position..<(position + Int(length))]))
        case 5: return (field, .fixed32(UInt32(try littleEndian(4))))
        case let type: throw Malformed(description: "field \(field) has unsupported wire type \(type)")
        }
    }

    private mutating func varint() throws -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while position < bytes.endIndex && shift < 64 {
            let byte = bytes[position]
            position += 1
            result |= UInt64(byte & 0x7F) << shift
            if byte & 0x80 == 0 { return result }
            shift += 7
        }
        throw Malformed(description: "truncated or overlong varint")
    }

    private mutating func littleEndian(_ count: Int) throws -> UInt64 {
        guard bytes.endIndex - position >= count else { throw Malformed(description: "truncated \(count)-byte field") }
        var result: UInt64 = 0
        for offset in 0..<count { result |= UInt64(bytes[position + offset]) << (8 * UInt64(offset)) }
        position += count
        return result
    }
}
