// matmul.cl's matmul_route_ffn with the next layer's decode attention as its last phase
// (ROUTE_ATTN; MatmulOp::run_route_tail with RouteTail::Ffn::attention): attention.cl and
// matmul.cl in one program, built with both programs' options.
#define ROUTE_ATTN 1
#include "attention.cl"
#include "matmul.cl"
