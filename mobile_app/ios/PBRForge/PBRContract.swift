// The deployment contract and the self-check files written by export/converter.py.
// The Python runtime reads the same fields; tests/test_on_device.py checks every JSON key named here
// against the files the exporter writes, so both sides agree on names, sizes and ranges.
import CoreML
import Foundation

struct PBRContract: Codable {
    static let metadataKey = "pbrforge.contract"  // where the converter embeds it in the model's metadata

    let imageSize: Int
    let outputSize: Int
    let srScale: Int
    let family: String
    let modelName: String
    let finalSize: Int
    let inputNames: [String]
    let outputNames: [String]
    let outputChannels: [String: Int]
    let outputRanges: [String: [Double]]
    let normalConvention: String
    let version: Int
    let testVectors: String?  // the self-check folder beside the model ("" or absent = none)

    enum CodingKeys: String, CodingKey {
        case imageSize = "image_size", outputSize = "output_size", srScale = "sr_scale", family = "family"
        case modelName = "model_name", finalSize = "final_size", inputNames = "input_names"
        case outputNames = "output_names", outputChannels = "output_channels", outputRanges = "output_ranges"
        case normalConvention = "normal_convention", version = "version", testVectors = "test_vectors"
    }

    /// The contract the model carries itself: it cannot drift from the model it describes.
    static func load(from model: MLModel) throws -> PBRContract {
        let metadata = model.modelDescription.metadata[.creatorDefinedKey] as? [String: String]
        guard let json = metadata?[metadataKey]?.data(using: .utf8) else {
            throw PBRError.badContract("the model has no \(metadataKey) metadata: export it with export/converter.py")
        }
        return try check(JSONDecoder().decode(PBRContract.self, from: json))
    }

    /// A contract file (contract.json), for tools that hold no model.
    static func load(from url: URL) throws -> PBRContract {
        try check(JSONDecoder().decode(PBRContract.self, from: Data(contentsOf: url)))
    }

    private static func check(_ c: PBRContract) throws -> PBRContract {
        guard c.version == 1, c.inputNames.count == 3, c.outputSize == c.imageSize * c.srScale,
              c.outputNames.allSatisfy({ c.outputChannels[$0] != nil })
        else { throw PBRError.badContract("unsupported contract version \(c.version), views or sizes") }
        return c
    }
}

/// One artifact's tolerance in `tolerances.json`; the device judges the tensor part.
struct PBRTolerance: Codable {
    let tensor: PBRTensorTolerance?
    enum CodingKeys: String, CodingKey { case tensor = "tensor" }
}

struct PBRTensorTolerance: Codable {
    let figure: String  // "max_abs" (at most limit) or "psnr_db" (at least limit)
    let limit: Double
    enum CodingKeys: String, CodingKey { case figure = "figure", limit = "limit" }
}

/// `tolerances.json` in `OUTPUT.testvectors/`.
struct PBRTestVectors: Codable {
    let version: Int
    let imageSize: Int
    let inputs: [[String]]  // per sample, the three view PNGs, relative to the folder
    let outputNames: [String]
    let expected: String  // the safetensors file of PyTorch's outputs, one (N, C, S, S) float32 per name
    let artifacts: [String: PBRTolerance]

    enum CodingKeys: String, CodingKey {
        case version = "version", imageSize = "image_size", inputs = "inputs", outputNames = "output_names"
        case expected = "expected", artifacts = "artifacts"
    }
}

/// The few lines of the safetensors format a self-check needs: an 8-byte little-endian header length, a
/// JSON header of name -> dtype, shape, byte offsets, then the raw tensors.
struct SafeTensors {
    private let data: Data
    private let header: [String: Any]
    private let start: Int

    init(contentsOf url: URL) throws {
        data = try Data(contentsOf: url, options: .mappedIfSafe)
        guard data.count >= 8 else { throw PBRError.badInput("\(url.lastPathComponent) is not safetensors") }
        let length = data.prefix(8).enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        guard length > 0, 8 + length <= data.count,
              let json = try JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + length))) as? [String: Any]
        else { throw PBRError.badInput("\(url.lastPathComponent) has no readable safetensors header") }
        header = json
        start = 8 + length
    }

    /// A float32 tensor as a flat array in C order, and its shape.
    func floats(_ name: String) throws -> (values: [Float], shape: [Int]) {
        guard let entry = header[name] as? [String: Any], entry["dtype"] as? String == "F32",
              let shape = entry["shape"] as? [Int], let offsets = entry["data_offsets"] as? [Int], offsets.count == 2,
              start + offsets[1] <= data.count, offsets[1] - offsets[0] == shape.reduce(1, *) * 4
        else { throw PBRError.badInput("expected outputs hold no float32 tensor \(name)") }
        let bytes = data.subdata(in: (start + offsets[0])..<(start + offsets[1]))
        let values = bytes.withUnsafeBytes { raw in (0..<(bytes.count / 4)).map { raw.loadUnaligned(fromByteOffset: $0 * 4, as: Float.self) } }
        return (values, shape)
    }
}

enum PBRError: Error {
    case badContract(String)
    case badInput(String)
    case badOutput(String)
}
