/* bench/mpi_allreduce.c: MPI_Allreduce (sum, in place) of N floats, as evowidth sums its
 * gradient arena (daemon/dist.c). Usage: mpirun -np P mpi_allreduce N [REPS]
 * Prints one JSON line from rank 0: floats, bytes, seconds per call (median of REPS, each
 * after a barrier) and the "bus bandwidth" 2 (P-1)/P * bytes / seconds, the bytes a ring
 * allreduce moves through each rank's link. Not a test. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    long n = argc > 1 ? atol(argv[1]) : 1 << 20;
    int reps = argc > 2 ? atoi(argv[2]) : 20;
    if (n < 1 || n > (1L << 30) || reps < 1 || reps > 100000) {
        if (!rank) fprintf(stderr, "usage: mpi_allreduce FLOATS [REPS]\n");
        MPI_Finalize();
        return 2;
    }
    float *g = malloc((size_t)n * sizeof(float));
    double *t = malloc((size_t)reps * sizeof(double));
    if (!g || !t) MPI_Abort(MPI_COMM_WORLD, 1);
    for (long i = 0; i < n; i++) g[i] = 1e-3f * (float)(i % 1000);
    MPI_Allreduce(MPI_IN_PLACE, g, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD); // warm-up
    for (int r = 0; r < reps; r++) {
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime();
        MPI_Allreduce(MPI_IN_PLACE, g, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        t[r] = MPI_Wtime() - t0;
    }
    qsort(t, (size_t)reps, sizeof(double), cmp_double);
    double med = t[reps / 2], bytes = (double)n * sizeof(float);
    if (!rank)
        printf("{\"ranks\": %d, \"floats\": %ld, \"bytes\": %.0f, \"seconds\": %.6g, "
               "\"bus_gbit_s\": %.4g}\n",
               size, n, bytes, med, 2.0 * (size - 1) / size * bytes * 8 / med / 1e9);
    free(g);
    free(t);
    MPI_Finalize();
    return 0;
}
