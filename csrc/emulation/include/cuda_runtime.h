// Stand-in for the CUDA toolkit header of this name in the CPU emulation (../cuda_emulation.h).
#pragma once
#include "../cuda_emulation.h"
