import ConvoyNN
import ConvoyTensor
import Foundation
import Testing

// MARK: - Helpers

/// A safetensors file from a raw length prefix and the bytes after it, for building malformed files by hand.
private func rawFile(headerLength: UInt64, rest: [UInt8]) -> Data {
    var data = Data()
    withUnsafeBytes(of: headerLength.littleEndian) { data.append(contentsOf: $0) }
    data.append(contentsOf: rest)
    return data
}

/// A safetensors file with the given JSON header text and data section.
private func file(header: String, data: [UInt8] = []) -> Data {
    let headerBytes = Array(header.utf8)
    return rawFile(headerLength: UInt64(headerBytes.count), rest: headerBytes + data)
}

/// Decodes `bytes`, expects a `.malformedFile` error and returns its reason ("" when something else happened).
private func malformedReason(_ bytes: Data, sourceLocation: SourceLocation = #_sourceLocation) -> String {
    let error = #expect(throws: ConvoyError.self, sourceLocation: sourceLocation) {
        _ = try SafeTensors.decode(bytes, path: "bad.safetensors")
    }
    guard case .malformedFile(let path, let reason)? = error else {
        Issue.record("expected ConvoyError.malformedFile, got \(String(describing: error))", sourceLocation: sourceLocation)
        return ""
    }
    #expect(path == "bad.safetensors", sourceLocation: sourceLocation)
    return reason
}

private func bitPatterns(_ tensor: Tensor) -> [UInt16] {
    precondition(tensor.dtype == .bfloat16 && tensor.isContiguous)
    let start = tensor.storage.pointer.assumingMemoryBound(to: UInt16.self) + tensor.offset
    return Array(UnsafeBufferPointer(start: start, count: tensor.count))
}

private func headerText(_ bytes: Data) -> String {
    let length = Int(bytes.prefix(8).withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) })
    return String(decoding: bytes.dropFirst(8).prefix(length), as: UTF8.self)
}

private func temporaryDirectory() throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("convoy-safetensors-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

// MARK: - Round trips

@Test func float32RoundTripIncludingScalarAndEmptyTensors() throws {
    let matrix = Tensor(shape: [2, 3], values: [1, -2, 3.5, 0, .greatestFiniteMagnitude, -.leastNonzeroMagnitude])
    let original = SafeTensors(tensors: [
        "matrix": matrix,
        "scalar": Tensor(scalar: 42.25),
        "empty": Tensor(uninitializedShape: [0, 3]),
        "transposed": Tensor(shape: [2, 2], values: [1, 2, 3, 4]).transposed(),
    ])
    let decoded = try SafeTensors.decode(original.encode())
    #expect(decoded.tensors.count == 4)
    #expect(decoded.metadata.isEmpty)
    #expect(decoded.tensors["matrix"]?.dtype == .float32)
    #expect(decoded.tensors["matrix"]?.shape == [2, 3])
    #expect(decoded.tensors["matrix"]?.toArray() == matrix.toArray())
    #expect(decoded.tensors["scalar"]?.shape == [])
    #expect(decoded.tensors["scalar"]?.toArray() == [42.25])
    #expect(decoded.tensors["empty"]?.shape == [0, 3])
    #expect(decoded.tensors["empty"]?.count == 0)
    #expect(decoded.tensors["transposed"]?.toArray() == [1, 3, 2, 4])
}

@Test func bfloat16RoundTripIsBitExact() throws {
    let values: [Float] = [1, -0.5, 3.140625, 1e-30, -1e30, .infinity, 0, -0.0]
    let bf16 = Tensor(shape: [2, 4], values: values).converted(to: .bfloat16)
    let decoded = try SafeTensors.decode(SafeTensors(tensors: ["w": bf16]).encode())
    let loaded = try #require(decoded.tensors["w"])
    #expect(loaded.dtype == .bfloat16)
    #expect(loaded.shape == [2, 4])
    #expect(bitPatterns(loaded) == bitPatterns(bf16))
    #expect(headerText(SafeTensors(tensors: ["w": bf16]).encode()).contains("\"BF16\""))

    // float32 written as BF16 loads as the rounded bfloat16 values.
    let asBF16 = try SafeTensors.decode(SafeTensors(tensors: ["w": Tensor(shape: [8], values: values)]).encode(float32As: .bf16))
    let rounded = try #require(asBF16.tensors["w"])
    #expect(rounded.dtype == .bfloat16)
    #expect(bitPatterns(rounded) == values.map { BFloat16($0).bitPattern })
}

@Test func float16WriteAndReadWithinTolerance() throws {
    let values: [Float] = [1, -0.333333, 3.14159, 1000.5, -65504, 0.0001, 0]
    let bytes = SafeTensors(tensors: ["h": Tensor(shape: [7], values: values)]).encode(float32As: .f16)
    #expect(headerText(bytes).contains("\"F16\""))
    let loaded = try #require(SafeTensors.decode(bytes).tensors["h"])
    #expect(loaded.dtype == .float32)
    for (read, written) in zip(loaded.toArray(), values) {
        #expect(abs(read - written) <= max(abs(written) * 1e-3, 1e-7), "\(read) vs \(written)")
    }
}

@Test func metadataRoundTrip() throws {
    let metadata = ["format": "pt", "quote\"and\\slash": "line\nbreak\ttab \u{1} ünïcödé"]
    let decoded = try SafeTensors.decode(SafeTensors(tensors: ["x": Tensor(scalar: 1)], metadata: metadata).encode())
    #expect(decoded.metadata == metadata)
}

@Test func headerIsPaddedSortedAndDataIsAligned() throws {
    for nameLength in 1...9 {
        let name = String(repeating: "n", count: nameLength)
        let set = SafeTensors(
            tensors: [name: Tensor(shape: [3], values: [1, 2, 3]), "a": Tensor(scalar: 0)],
            metadata: ["k": "v"])
        let bytes = set.encode()
        let headerLength = Int(bytes.prefix(8).withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) })
        #expect((8 + headerLength) % 8 == 0)
        #expect(bytes.count == 8 + headerLength + 16)
        let header = headerText(bytes)
        #expect(header.hasPrefix("{\"__metadata__\":"))
        let aPosition = try #require(header.range(of: "\"a\":")).lowerBound
        let namePosition = try #require(header.range(of: "\"\(name)\":")).lowerBound
        #expect(aPosition < namePosition)
        #expect(header.contains("\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}"))
        #expect(header.contains("\"data_offsets\":[4,16]"))
    }
    // No metadata: no __metadata__ key.
    #expect(!headerText(SafeTensors(tensors: ["x": Tensor(scalar: 1)]).encode()).contains("__metadata__"))
}

@Test func huggingFaceFixtureLoads() throws {
    let url = try #require(Bundle.module.resourceURL).appendingPathComponent("Fixtures/hf-gpt2-tiny/model.safetensors")
    let loaded = try SafeTensors.read(contentsOf: url.path)
    #expect(loaded.tensors.count == 28)
    #expect(loaded.tensors["transformer.wte.weight"]?.shape == [256, 32])
    #expect(loaded.tensors["transformer.wte.weight"]?.dtype == .float32)
    #expect(loaded.metadata["format"] == "pt")
    // Re-encoding and decoding preserves every tensor exactly.
    let again = try SafeTensors.decode(loaded.encode())
    #expect(again.tensors.keys.sorted() == loaded.tensors.keys.sorted())
    for (name, tensor) in loaded.tensors {
        #expect(again.tensors[name]?.shape == tensor.shape)
        #expect(again.tensors[name]?.toArray() == tensor.toArray(), "\(name)")
    }
}

@Test func readingAMissingFileIsAnIOError() {
    let error = #expect(throws: ConvoyError.self) {
        _ = try SafeTensors.read(contentsOf: "/nonexistent-convoy-dir/model.safetensors")
    }
    guard case .io? = error else {
        Issue.record("expected ConvoyError.io, got \(String(describing: error))")
        return
    }
}

// MARK: - Atomic writes

@Test func failedWriteLeavesExistingFileUntouched() throws {
    let directory = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(at: directory) }
    let good = directory.appendingPathComponent("good.safetensors").path
    try SafeTensors(tensors: ["w": Tensor(shape: [2], values: [1, 2])]).write(to: good)
    let goodBytes = try Data(contentsOf: URL(fileURLWithPath: good))

    let missingDirectory = directory.appendingPathComponent("missing/model.safetensors").path
    let error = #expect(throws: ConvoyError.self) {
        try SafeTensors(tensors: ["w": Tensor(shape: [1], values: [9])]).write(to: missingDirectory)
    }
    guard case .io? = error else {
        Issue.record("expected ConvoyError.io, got \(String(describing: error))")
        return
    }
    #expect(try Data(contentsOf: URL(fileURLWithPath: good)) == goodBytes)
    #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path) == ["good.safetensors"])

    // Renaming onto a directory fails after the temporary file is written: it must be removed, and the
    // directory left as it was.
    let blocker = directory.appendingPathComponent("blocker")
    try FileManager.default.createDirectory(at: blocker.appendingPathComponent("child"), withIntermediateDirectories: true)
    #expect(throws: ConvoyError.self) {
        try SafeTensors(tensors: ["w": Tensor(shape: [1], values: [9])]).write(to: blocker.path)
    }
    #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted() == ["blocker", "good.safetensors"])
    #expect(try FileManager.default.contentsOfDirectory(atPath: blocker.path) == ["child"])
    #expect(try Data(contentsOf: URL(fileURLWithPath: good)) == goodBytes)
}

@Test func successfulOverwriteReplacesContent() throws {
    let directory = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(at: directory) }
    let path = directory.appendingPathComponent("model.safetensors").path
    try SafeTensors(tensors: ["old": Tensor(shape: [2], values: [1, 2])], metadata: ["v": "1"]).write(to: path)
    try SafeTensors(tensors: ["new": Tensor(shape: [3], values: [4, 5, 6])], metadata: ["v": "2"]).write(to: path, float32As: .bf16)
    let loaded = try SafeTensors.read(contentsOf: path)
    #expect(Array(loaded.tensors.keys) == ["new"])
    #expect(loaded.tensors["new"]?.dtype == .bfloat16)
    #expect(loaded.tensors["new"]?.toArray() == [4, 5, 6])
    #expect(loaded.metadata == ["v": "2"])
    #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path) == ["model.safetensors"])
}

// MARK: - Malformed files

@Test func rejectsFileShorterThanEightBytes() {
    #expect(malformedReason(Data([1, 2, 3])).contains("shorter than"))
    #expect(malformedReason(Data()).contains("shorter than"))
}

@Test func rejectsHeaderLengthPastEndOfFile() {
    #expect(malformedReason(rawFile(headerLength: 100, rest: Array("{}".utf8))).contains("past the end of the file"))
}

@Test func rejectsHugeHeader() {
    // Declared 200 MB in a tiny file: refused on the declared size, without allocating it.
    #expect(malformedReason(rawFile(headerLength: 200_000_000, rest: Array("{}".utf8))).contains("huge header"))
    #expect(malformedReason(rawFile(headerLength: .max, rest: [])).contains("huge header"))
}

@Test func rejectsHeaderThatIsNotUTF8() {
    #expect(malformedReason(rawFile(headerLength: 4, rest: [0x7B, 0xFF, 0xFE, 0x7D])).contains("UTF-8"))
}

@Test func rejectsHeaderThatIsNotJSON() {
    #expect(malformedReason(file(header: "{\"a\": ")).contains("not valid JSON"))
}

@Test func rejectsHeaderThatIsNotAnObject() {
    #expect(malformedReason(file(header: "[1, 2, 3]")).contains("not an object"))
    #expect(malformedReason(file(header: "{\"w\": 5}")).contains("'w' is not a JSON object"))
}

@Test(arguments: ["dtype", "shape", "data_offsets"])
func rejectsEntryMissingField(field: String) {
    var fields = ["\"dtype\": \"F32\"", "\"shape\": [1]", "\"data_offsets\": [0, 4]"]
    fields.removeAll { $0.hasPrefix("\"\(field)\"") }
    let reason = malformedReason(file(header: "{\"w\": {\(fields.joined(separator: ", "))}}", data: [0, 0, 0, 0]))
    #expect(reason.contains("'w'"))
    #expect(reason.contains("missing '\(field)'"))
}

@Test(arguments: [
    ("\"dtype\": 5, \"shape\": [1], \"data_offsets\": [0, 4]", "'dtype' that is not a string"),
    ("\"dtype\": \"F32\", \"shape\": \"1\", \"data_offsets\": [0, 4]", "'shape' that is not a JSON array"),
    ("\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0, 4]", "not an integer"),
    ("\"dtype\": \"F32\", \"shape\": [1.0], \"data_offsets\": [0, 4]", "not an integer"),
    ("\"dtype\": \"F32\", \"shape\": [true], \"data_offsets\": [0, 4]", "not an integer"),
    ("\"dtype\": \"F32\", \"shape\": [\"1\"], \"data_offsets\": [0, 4]", "not an integer"),
    ("\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0]", "not an array of two integers"),
    ("\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": {\"begin\": 0}", "not an array of two integers"),
    ("\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4.0]", "'data_offsets' that are not integers"),
    ("\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 18446744073709551615]", "'data_offsets' that are not integers"),
])
func rejectsEntryWithWrongJSONTypes(fields: String, expected: String) {
    let reason = malformedReason(file(header: "{\"w\": {\(fields)}}", data: [0, 0, 0, 0]))
    #expect(reason.contains("'w'"))
    #expect(reason.contains(expected), "\(reason)")
}

@Test func rejectsNegativeDimensions() {
    let reason = malformedReason(file(header: #"{"w": {"dtype": "F32", "shape": [-1, 2], "data_offsets": [0, 8]}}"#, data: Array(repeating: 0, count: 8)))
    #expect(reason.contains("'w'"))
    #expect(reason.contains("negative dimension -1"))
}

@Test func rejectsUnsupportedAndUnknownDTypes() {
    let unsupported = malformedReason(file(header: #"{"ids": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}"#, data: Array(repeating: 0, count: 8)))
    #expect(unsupported.contains("'ids'"))
    #expect(unsupported.contains("I64"))
    #expect(unsupported.contains("does not support"))
    let unknown = malformedReason(file(header: #"{"w": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}}"#, data: [0]))
    #expect(unknown.contains("unknown dtype 'Q7'"))
}

@Test func rejectsDataOffsetsOutOfRange() {
    let reason = malformedReason(file(header: #"{"w": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]}}"#, data: Array(repeating: 0, count: 8)))
    #expect(reason.contains("'w'"))
    #expect(reason.contains("out of range"))
    let negative = malformedReason(file(header: #"{"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}}"#, data: Array(repeating: 0, count: 8)))
    #expect(negative.contains("out of range"))
}

@Test func rejectsBeginAfterEnd() {
    let reason = malformedReason(file(header: #"{"w": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}"#, data: Array(repeating: 0, count: 8)))
    #expect(reason.contains("'w'"))
    #expect(reason.contains("begin 8 > end 4"))
}

@Test func rejectsOverlappingTensors() {
    // Listed out of order on purpose: the check must sort by begin.
    let header = #"{"b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}, "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}"#
    let reason = malformedReason(file(header: header, data: Array(repeating: 0, count: 12)))
    #expect(reason.contains("overlap"))
    #expect(reason.contains("'a'") && reason.contains("'b'"))
}

@Test func rejectsByteLengthThatDoesNotMatchShape() {
    let reason = malformedReason(file(header: #"{"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}"#, data: Array(repeating: 0, count: 8)))
    #expect(reason.contains("'w'"))
    #expect(reason.contains("byte length 8"))
    #expect(reason.contains("needs 12 bytes"))
    // A shape whose byte size overflows must not wrap around to a plausible length.
    let overflow = malformedReason(file(header: #"{"w": {"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 0]}}"#))
    #expect(overflow.contains("byte length 0"))
}

@Test func rejectsNonStringMetadataValues() {
    let reason = malformedReason(file(header: #"{"__metadata__": {"epoch": 3}}"#))
    #expect(reason.contains("__metadata__"))
    #expect(reason.contains("'epoch' is not a string"))
    #expect(malformedReason(file(header: #"{"__metadata__": ["pt"]}"#)).contains("__metadata__ is not a JSON object"))
}
