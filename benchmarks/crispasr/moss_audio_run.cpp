// moss_audio_run: CrispASR's MOSS-Audio library on one WAV file, the way its CLI's moss-audio
// backend drives it, for a machine where the full `crispasr` CLI cannot be linked (it links every
// backend, and some of them need ops that exist only in CrispASR's ggml fork).
//
// What the CLI does for `--backend moss-audio` with default options, and this does too:
//   * 16 kHz mono input; slices of at most 30 s cut at the quietest 100 ms of the last 5 s
//     (crispasr_energy_chunk_slices -> audio_chunking::split_at_energy_minima);
//   * with more than one slice, each slice is widened by 3 s of audio on both sides
//     (overlap-save, chunk_overlap_seconds = 3, moss-audio is not on the opt-out list);
//   * per slice: moss_audio_process(ctx, slice, "Transcribe this audio.") with greedy decoding;
//   * context params: defaults, n_threads from -t, verbosity 1, no GPU.
// The CLI's trimming of text back to the slice and its output formatting are left out.
//
// Usage: moss_audio_run MODEL.gguf AUDIO.wav THREADS
#include "moss_audio.h"
#include "core/audio_chunking.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr int kSampleRate = 16000;
constexpr size_t kSliceSeconds = 30;
constexpr size_t kSearchSeconds = 5;
constexpr size_t kEnergyWindow = kSampleRate / 10;  // 100 ms
constexpr int kOverlapSamples = 3 * kSampleRate;

uint32_t le32(const unsigned char* p) { return p[0] | (p[1] << 8) | (p[2] << 16) | ((uint32_t)p[3] << 24); }
uint16_t le16(const unsigned char* p) { return (uint16_t)(p[0] | (p[1] << 8)); }

// A RIFF/WAVE file of 16-bit PCM, mono, 16 kHz (what the benchmark writes), as floats in [-1, 1).
bool read_wav(const char* path, std::vector<float>& out) {
    FILE* f = std::fopen(path, "rb");
    if (!f)
        return false;
    std::vector<unsigned char> bytes;
    unsigned char buf[1 << 16];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0)
        bytes.insert(bytes.end(), buf, buf + n);
    std::fclose(f);
    if (bytes.size() < 12 || std::memcmp(bytes.data(), "RIFF", 4) || std::memcmp(bytes.data() + 8, "WAVE", 4))
        return false;
    bool format_ok = false;
    for (size_t pos = 12; pos + 8 <= bytes.size();) {
        const unsigned char* chunk = bytes.data() + pos;
        const size_t size = le32(chunk + 4);
        const unsigned char* body = chunk + 8;
        if (pos + 8 + size > bytes.size())
            return false;
        if (!std::memcmp(chunk, "fmt ", 4) && size >= 16) {
            format_ok = le16(body) == 1 && le16(body + 2) == 1 && le32(body + 4) == kSampleRate && le16(body + 14) == 16;
        } else if (!std::memcmp(chunk, "data", 4)) {
            if (!format_ok)
                return false;
            out.resize(size / 2);
            for (size_t i = 0; i < out.size(); i++)
                out[i] = (int16_t)le16(body + 2 * i) / 32768.0f;
            return true;
        }
        pos += 8 + size + (size & 1);  // chunks are padded to even sizes
    }
    return false;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 4) {
        std::fprintf(stderr, "usage: %s MODEL.gguf AUDIO.wav THREADS\n", argv[0]);
        return 2;
    }
    std::vector<float> samples;
    if (!read_wav(argv[2], samples) || samples.empty()) {
        std::fprintf(stderr, "error: %s is not a 16 kHz mono 16-bit PCM WAV file\n", argv[2]);
        return 3;
    }
    moss_audio_context_params params = moss_audio_context_default_params();
    params.n_threads = std::atoi(argv[3]);
    params.verbosity = 1;
    params.use_gpu = false;
    moss_audio_context* ctx = moss_audio_init_from_file(argv[1], params);
    if (!ctx) {
        std::fprintf(stderr, "error: cannot load %s\n", argv[1]);
        return 3;
    }
    moss_audio_set_beam_size(ctx, 1);
    const auto slices = audio_chunking::split_at_energy_minima(
        samples.data(), samples.size(), kSliceSeconds * kSampleRate, kSearchSeconds * kSampleRate, kEnergyWindow);
    const int overlap = slices.size() > 1 ? kOverlapSamples : 0;
    for (const auto& slice : slices) {
        const int start = std::max(0, (int)slice.first - overlap);
        const int end = std::min((int)samples.size(), (int)slice.second + overlap);
        char* text = moss_audio_process(ctx, samples.data() + start, end - start, "Transcribe this audio.");
        if (!text) {
            std::fprintf(stderr, "error: moss_audio_process failed on [%d, %d)\n", start, end);
            moss_audio_free(ctx);
            return 1;
        }
        std::printf("[%.2f -> %.2f] %s\n", slice.first / (double)kSampleRate, slice.second / (double)kSampleRate, text);
        std::free(text);
    }
    moss_audio_free(ctx);
    return 0;
}
