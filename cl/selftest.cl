/* selftest.cl: tiny kernels with known answers, run before real work to prove that the
 * compiler, the launch path and the accumulation type behave on this device. */

/* y = a*x + y, one element per work-item; n need not be a multiple of the work-group size. */
__kernel void rvs_selftest_axpy(const float a, __global const float *x, __global float *y,
                                const uint n)
{
    size_t i = get_global_id(0);
    if (i < n)
        y[i] = a * x[i] + y[i];
}

/* Sum of x[0..n) by one work-group of RVS_SELFTEST_GROUP work-items: strided compensated
 * partial sums, then a tree reduction in local memory. */
#define RVS_SELFTEST_GROUP 64
__kernel __attribute__((reqd_work_group_size(RVS_SELFTEST_GROUP, 1, 1))) void
rvs_selftest_sum(__global const float *x, const uint n, __global float *out)
{
    __local rvs_acc partial[RVS_SELFTEST_GROUP];
    size_t lid = get_local_id(0);
    rvs_ksum s;
    rvs_ksum_init(&s);
    for (uint i = lid; i < n; i += RVS_SELFTEST_GROUP)
        rvs_ksum_add(&s, (rvs_acc)x[i]);
    partial[lid] = rvs_ksum_value(&s);
    barrier(CLK_LOCAL_MEM_FENCE);
    for (size_t stride = RVS_SELFTEST_GROUP / 2; stride > 0; stride /= 2) {
        if (lid < stride)
            partial[lid] += partial[lid + stride];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0)
        out[0] = (float)partial[0];
}
