// Runs on the audio thread: the microphone's float samples (at the AudioContext's rate, mono)
// become 16-bit PCM posted to the page in blocks of `blockSamples` (40 ms).
class PcmBlocks extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.size = options.processorOptions.blockSamples;
    this.block = new Int16Array(this.size);
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) {
      for (let i = 0; i < channel.length; i++) {
        const s = Math.max(-1, Math.min(1, channel[i]));
        this.block[this.filled++] = s < 0 ? s * 32768 : s * 32767;
        if (this.filled === this.size) {
          this.port.postMessage(this.block.buffer, [this.block.buffer]); // transferred: a new block follows
          this.block = new Int16Array(this.size);
          this.filled = 0;
        }
      }
    }
    return true;
  }
}

registerProcessor("pcm-blocks", PcmBlocks);
