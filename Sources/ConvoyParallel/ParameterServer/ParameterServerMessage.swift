import ConvoyComm
import ConvoyTensor

/// The tags of parameter-server traffic (requests go to a server's any-source probe; replies come back on
/// their own tag, so a worker's other traffic cannot be mistaken for either).
enum ParameterServerTag {
    static let request = 30_001
    static let reply = 30_002
}

/// What a worker asks a server.
enum ParameterServerRequestKind: Int {
    case pull = 1, push = 2, save = 3, stop = 4
}

/// A message as Float32 words (what a ``CommunicationBuffer`` carries); integers travel as Int32 bit patterns,
/// which both backends move unchanged.
final class MessageBuffer {
    let words: UnsafeMutablePointer<Float>
    let count: Int

    init(count: Int) {
        self.count = count
        words = .allocate(capacity: Swift.max(count, 1))
    }

    convenience init(_ writer: MessageWriter) {
        self.init(count: writer.words.count)
        writer.words.withUnsafeBufferPointer { source in
            if let base = source.baseAddress { words.update(from: base, count: count) }
        }
    }

    deinit { words.deallocate() }

    /// The whole message; the buffer keeps this object alive while an operation holds it.
    var communicationBuffer: CommunicationBuffer {
        CommunicationBuffer(pointer: UnsafeMutableRawPointer(words), count: count, dtype: .float32, owner: self)
    }

    var byteCount: Int { count * 4 }
}

struct MessageWriter {
    var words: [Float] = []

    mutating func integer(_ value: Int) { words.append(Float(bitPattern: UInt32(bitPattern: Int32(truncatingIfNeeded: value)))) }
    mutating func ids(_ values: [Int32]) {
        words.reserveCapacity(words.count + values.count)
        for value in values { words.append(Float(bitPattern: UInt32(bitPattern: value))) }
    }
    mutating func floats(_ values: UnsafeBufferPointer<Float>) { words.append(contentsOf: values) }
}

/// Reads a message written by ``MessageWriter``; a short message is an error naming the sender.
struct MessageReader {
    let message: MessageBuffer
    let sender: String
    var cursor = 0

    init(_ message: MessageBuffer, sender: String) {
        self.message = message
        self.sender = sender
    }

    private mutating func take(_ count: Int) throws -> Int {
        guard count >= 0, cursor + count <= message.count else {
            throw ConvoyError.invalidArgument("a parameter-server message from \(sender) is malformed: it has \(message.count) words, \(cursor + count) were expected")
        }
        defer { cursor += count }
        return cursor
    }

    mutating func integer() throws -> Int {
        let index = try take(1)
        return Int(Int32(bitPattern: message.words[index].bitPattern))
    }

    mutating func ids(_ count: Int) throws -> [Int32] {
        let start = try take(count)
        return (start..<(start + count)).map { Int32(bitPattern: message.words[$0].bitPattern) }
    }

    /// The next `count` floats, in place.
    mutating func floats(_ count: Int) throws -> UnsafeMutablePointer<Float> {
        let start = try take(count)
        return message.words + start
    }
}
