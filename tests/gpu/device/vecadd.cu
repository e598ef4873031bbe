// minictr device check: vector add on every visible GPU; prints the device name and a checksum.
#include <cstdio>
#include <cstdlib>
#include <cuda_runtime.h>

__global__ void add(const float *a, const float *b, float *c, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) c[i] = a[i] + b[i];
}

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { \
    printf("CUDA error %s at %s:%d: %s\n", #x, __FILE__, __LINE__, cudaGetErrorString(e)); \
    return 1; } } while (0)

int main() {
    int n_dev = -1, drv = 0, rt = 0;
    cudaError_t e = cudaGetDeviceCount(&n_dev);
    cudaDriverGetVersion(&drv);
    cudaRuntimeGetVersion(&rt);
    printf("cudaGetDeviceCount=%d (%s) driver=%d runtime=%d\n", n_dev, cudaGetErrorString(e), drv, rt);
    if (e != cudaSuccess || n_dev < 1) return 2;
    const int n = 1 << 24;
    float *ha = (float *)malloc(n * sizeof(float)), *hb = (float *)malloc(n * sizeof(float)),
          *hc = (float *)malloc(n * sizeof(float));
    for (int i = 0; i < n; i++) { ha[i] = (float)(i % 1000); hb[i] = (float)(2 * (i % 7)); }
    for (int d = 0; d < n_dev; d++) {
        cudaDeviceProp p;
        CK(cudaGetDeviceProperties(&p, d));
        CK(cudaSetDevice(d));
        float *a, *b, *c;
        CK(cudaMalloc(&a, n * sizeof(float))); CK(cudaMalloc(&b, n * sizeof(float)));
        CK(cudaMalloc(&c, n * sizeof(float)));
        CK(cudaMemcpy(a, ha, n * sizeof(float), cudaMemcpyHostToDevice));
        CK(cudaMemcpy(b, hb, n * sizeof(float), cudaMemcpyHostToDevice));
        add<<<(n + 255) / 256, 256>>>(a, b, c, n);
        CK(cudaGetLastError());
        CK(cudaDeviceSynchronize());
        CK(cudaMemcpy(hc, c, n * sizeof(float), cudaMemcpyDeviceToHost));
        double sum = 0;
        for (int i = 0; i < n; i++) sum += hc[i];
        printf("device %d: %s cc%d.%d busid %04x:%02x:%02x checksum=%.0f\n", d, p.name, p.major,
               p.minor, p.pciDomainID, p.pciBusID, p.pciDeviceID, sum);
        cudaFree(a); cudaFree(b); cudaFree(c);
    }
    return 0;
}
