/* spandsp's DTMF receiver (dtmf_rx, default parameters) over raw audio files, for bench/dtmf_corpus.py.
 *
 *     cc -O2 -o spandsp_dtmf bench/spandsp_dtmf.c -lspandsp     (Debian: libspandsp-dev)
 *     spandsp_dtmf FILE...
 *
 * Each FILE holds 8 kHz signed 16-bit little-endian mono samples. The samples are fed in chunks of 8, and
 * every digit the receiver reports (its real-time callback: the moment it confirms a tone pair) is printed
 * as "INDEX DIGIT SAMPLE": the file's index among the arguments (0 first), the digit, and the number of
 * samples fed when it was reported. Exit status 2 if a file cannot be read.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <spandsp.h>

#define CHUNK 8

struct report {
    int index;
    long fed; /* samples fed before the current chunk */
};

static void on_tone(void *user_data, int code, int level, int delay) {
    const struct report *where = user_data;
    (void) level;
    (void) delay;
    if (code > 0)
        printf("%d %c %ld\n", where->index, code, where->fed + CHUNK);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        FILE *file = fopen(argv[i], "rb");
        if (file == NULL) {
            perror(argv[i]);
            return 2;
        }
        struct report where = {i - 1, 0};
        dtmf_rx_state_t *receiver = dtmf_rx_init(NULL, NULL, NULL);
        dtmf_rx_set_realtime_callback(receiver, on_tone, &where);
        int16_t samples[CHUNK];
        size_t got;
        while ((got = fread(samples, sizeof samples[0], CHUNK, file)) > 0) {
            dtmf_rx(receiver, samples, (int) got);
            where.fed += (long) got;
        }
        dtmf_rx_free(receiver);
        fclose(file);
    }
    return 0;
}
