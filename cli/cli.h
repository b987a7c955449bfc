/* cli/cli.h: the `evowidth` command (owner: cli/).
 *
 * cli/ owns everything the `evowidth` program does and the daemon does not: the foreground
 * subcommands (train, eval, layers: cli/cmd.c), the compression tools on saved models
 * (compress, sweep, thin, export: cli/compress.c), the HTTP client of a running evowidthd
 * (status, history, policy, pause, ...: cli/client.c, the only user of libcurl), the
 * printers they share (cli/print.c), ONNX and safetensors export and `evowidth predict`
 * (cli/onnx.h) and the subcommand table (cli/main_evowidth.c). It
 * builds into its own library, `cli`, so that evowidthd and the test binaries that do not
 * test these commands link neither libcurl nor the tools. It drives runs through the
 * trainer of daemon/daemon.h and keeps no numerics of its own beyond what a tool needs.
 *
 * Every dmn_cmd_* takes argc/argv starting at the subcommand and returns a process exit
 * code: 0 ok, 1 failure (one line on stderr naming the file or option), 2 usage. Nothing
 * here calls exit(). */
#ifndef CLI_CLI_H
#define CLI_CLI_H

#include <stdio.h>

#include "daemon/daemon.h"

// ---- foreground runs and saved models (cli/cmd.c) ----------------------------------------

/* `evowidth train CONFIG [...]`: trains in the foreground through dmn_trainer_tick (the run
 * loop evowidthd runs too) and writes the run checkpoint to -o MODEL periodically and at the
 * end. SIGTERM / SIGINT finish the step, write MODEL and return 0; a second signal exits at
 * once (128 + signal); `--resume` continues the run saved in MODEL. `evowidth eval MODEL`,
 * `evowidth layers MODEL`. */
int dmn_cmd_train(int argc, char **argv);
int dmn_cmd_eval(int argc, char **argv);
int dmn_cmd_layers(int argc, char **argv);

// ---- compression tools on saved models (cli/compress.c) ----------------------------------

/* `evowidth compress | sweep | thin | export MODEL ...` (see each one's --help and
 * docs/COMPRESSION.md): SVD factorization, the CaffeSVD rank sweep, the SOMP-style thin
 * network, and Deep Compression into an EVWZ file. */
int dmn_cmd_compress(int argc, char **argv);
int dmn_cmd_sweep(int argc, char **argv);
int dmn_cmd_thin(int argc, char **argv);
int dmn_cmd_export(int argc, char **argv);

// ---- the client of a running daemon (cli/client.c) ---------------------------------------

/* `evowidth status | layers | history | policy [get | set K=V ...] | pause | resume | adapt |
 * checkpoint | stop [--url URL] [--token-file F] [--json]`: argv[0] is the subcommand. Talks
 * HTTP to evowidthd with libcurl; prints tables, or raw JSON with --json. Exit code 1 when
 * the daemon answered an error or could not be reached. */
int dmn_cmd_client(int argc, char **argv);
/* `evowidth layers`: with a MODEL argument, dmn_cmd_layers (a saved model); without one, the
 * client's `layers` (the running daemon's layers). */
int dmn_cmd_layers_any(int argc, char **argv);

// ---- printers (cli/print.c) --------------------------------------------------------------

/* Human-readable evaluation: loss, accuracy, per-class precision/recall/F1, confusion. */
void dmn_print_eval(FILE *out, const char *title, const struct net_eval *ev);
/* Per-layer widths, parameters and MACs, and the totals. */
void dmn_print_layers(FILE *out, const struct net *n);
/* Top singular values of every dense / conv weight. */
void dmn_print_spectra(FILE *out, const struct net *n);

#endif
