#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *
probe(PyObject *self, PyObject *args)
{
    return PyLong_FromLong(1);
}

static PyMethodDef methods[] = {
    {"probe", probe, METH_NOARGS, "1"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_hourscan", NULL, -1, methods};

PyMODINIT_FUNC
PyInit__hourscan(void)
{
    return PyModule_Create(&module);
}
